// Packed .sqz format: index packing (layout drawn in model/packed.h) and the reader.
#include "model/packed.h"

#include "model/errors.h"
#include "model/model.h"

namespace sqz {

Model load_packed(const std::string& path) {
  throw format_error(path + ": packed .sqz reader is not built into this version");
}

}  // namespace sqz
