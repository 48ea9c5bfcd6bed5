// Hands out aligned pieces of one device allocation, so a backend plans all its GPU memory
// up front (one cudaMalloc, nothing in the hot path). With base == nullptr it only measures:
// the pointers it returns are offsets and are never dereferenced.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace sqz {

class DeviceArena {
 public:
  static constexpr size_t kAlign = 256;
  explicit DeviceArena(char* base = nullptr, size_t capacity = SIZE_MAX, const char* owner = "")
      : base_(base), cap_(capacity), owner_(owner) {}
  template <typename T>
  T* take(size_t n_elems) {
    const size_t off = (used_ + kAlign - 1) / kAlign * kAlign;
    used_ = off + n_elems * sizeof(T);
    if (base_ && used_ > cap_) throw std::logic_error(std::string(owner_) + ": memory plan exceeded");
    return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(base_) + off);
  }
  size_t used() const { return (used_ + kAlign - 1) / kAlign * kAlign; }

 private:
  char* base_;
  size_t cap_;
  const char* owner_;
  size_t used_ = 0;
};

}  // namespace sqz
