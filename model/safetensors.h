// The safetensors container: u64 little-endian header length, JSON header, raw data.
// The reader validates everything before any tensor is trusted (DESIGN.md section 3).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/dtype.h"
#include "model/mapped_file.h"

namespace sqz {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t n_bytes = 0;
  int64_t n_elems() const;
  std::string shape_str() const;  // "[512, 8000]"
};

class SafeTensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
  // Maps and validates `path`: header length within the file and under the cap, JSON well
  // formed, known dtypes, positive dims, byte counts equal to shape x dtype size (overflow
  // checked), offsets in range, contiguous and non-overlapping. Throws format_error.
  explicit SafeTensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& get(const std::string& name) const;  // throws format_error when absent
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::shared_ptr<MappedFile> file() const { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors in the given order (offsets contiguous, 8-byte aligned header), then
// renames into place so a failed write never leaves a half file behind.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t n_bytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace sqz
