// Exceptions raised by readers and validators. The message names the file, the tensor and
// what was expected; tools print it as one line.
#pragma once
#include <stdexcept>
#include <string>

namespace sqz {

struct format_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace sqz
