// safetensors reader and writer.
//
//   [u64 LE: N][N bytes of JSON header, space padded][data section]
//   header: {"__metadata__": {"k": "v", ...},
//            "name": {"dtype": "F16", "shape": [rows, cols], "data_offsets": [begin, end)}, ...}
//
// Offsets are relative to the data section. The reader trusts nothing: every number in the
// header is range checked before it becomes a pointer (DESIGN.md section 3).
#include "model/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "model/errors.h"

namespace sqz {

namespace {

using json = nlohmann::json;

// safetensors headers nest three levels deep (root / entry / shape); anything much deeper
// is not a safetensors header, and refusing it bounds the parser's work.
constexpr int kMaxJsonDepth = 8;

std::string range_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

std::string shape_to_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Bytes of a tensor of `shape` and `dtype`, or false when the product overflows int64.
bool checked_n_bytes(const std::vector<int64_t>& shape, DType dtype, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  return !__builtin_mul_overflow(n, int64_t(dtype_size(dtype)), out);
}

std::string known_dtypes() { return "F32, F16, BF16, F64, I64, I32, I16, U32, U16, U8"; }

// Parses the header, refusing duplicate keys (nlohmann would silently keep the last one,
// so two readers could disagree about which tensor a name means) and deep nesting.
json parse_header(const std::string& path, const uint8_t* begin, const uint8_t* end) {
  std::vector<std::set<std::string>> keys;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth)
          throw format_error(path + ": header: JSON nested deeper than " +
                             std::to_string(kMaxJsonDepth) + " levels");
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
          throw format_error(path + ": header: duplicate key '" + parsed.get<std::string>() + "'");
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    throw format_error(path + ": header is not valid JSON: " + e.what());
  }
}

struct Span {
  uint64_t begin, end;
  const std::string* name;
};

}  // namespace

int64_t TensorView::n_elems() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // shapes were overflow checked when the view was made
  return n;
}

std::string TensorView::shape_str() const { return shape_to_str(shape); }

SafeTensorsFile::SafeTensorsFile(const std::string& path)
    : file_(std::make_shared<MappedFile>(path)) {
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  if (size < 8)
    throw format_error(path + ": file is " + std::to_string(size) +
                       " bytes, too short for the 8-byte safetensors header length");
  const uint64_t n_header = read_le64(base);
  if (n_header > kMaxHeaderBytes)
    throw format_error(path + ": header length " + std::to_string(n_header) +
                       " exceeds the limit of " + std::to_string(kMaxHeaderBytes) +
                       " bytes (corrupt, or not a safetensors file)");
  if (n_header > size - 8)
    throw format_error(path + ": header length " + std::to_string(n_header) +
                       " runs past the end of the file (" + std::to_string(size) +
                       " bytes; truncated?)");
  if (n_header < 2 || base[8] != '{')
    throw format_error(path + ": header does not start with '{' (not a safetensors file?)");

  json header = parse_header(path, base + 8, base + 8 + n_header);
  if (!header.is_object())
    throw format_error(path + ": header is a JSON " + std::string(header.type_name()) +
                       ", expected an object");

  const uint8_t* data = base + 8 + n_header;
  const uint64_t data_size = size - 8 - n_header;
  std::vector<Span> spans;

  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw format_error(path + ": __metadata__ is a JSON " + std::string(entry.type_name()) +
                           ", expected an object of strings");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw format_error(path + ": __metadata__ key '" + k + "' is a JSON " +
                             std::string(v.type_name()) + ", expected a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "': ";
    if (!entry.is_object())
      throw format_error(where + "entry is a JSON " + std::string(entry.type_name()) +
                         ", expected an object with dtype, shape and data_offsets");

    TensorView v;
    v.name = name;

    auto dt = entry.find("dtype");
    if (dt == entry.end()) throw format_error(where + "missing 'dtype'");
    if (!dt->is_string())
      throw format_error(where + "'dtype' is a JSON " + std::string(dt->type_name()) +
                         ", expected a string");
    if (!dtype_from_name(dt->get<std::string>(), &v.dtype))
      throw format_error(where + "unknown dtype '" + dt->get<std::string>() +
                         "' (expected one of " + known_dtypes() + ")");

    auto sh = entry.find("shape");
    if (sh == entry.end()) throw format_error(where + "missing 'shape'");
    if (!sh->is_array())
      throw format_error(where + "'shape' is a JSON " + std::string(sh->type_name()) +
                         ", expected an array of integers");
    for (const json& d : *sh) {
      if (!d.is_number_integer())
        throw format_error(where + "shape " + sh->dump() + " has a non-integer dimension " +
                           d.dump());
      if (d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX))
        throw format_error(where + "shape " + sh->dump() + " has a dimension too large for int64");
      int64_t x = d.get<int64_t>();
      // Zero is allowed: a 0-element tensor (e.g. an empty CSR column list) is legal in the
      // container; readers that need positive dims check the expected shape themselves.
      if (x < 0)
        throw format_error(where + "negative dimension " + std::to_string(x) + " in shape " +
                           sh->dump());
      v.shape.push_back(x);
    }

    auto off = entry.find("data_offsets");
    if (off == entry.end()) throw format_error(where + "missing 'data_offsets'");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_integer() ||
        !(*off)[1].is_number_integer() || (*off)[0].get<int64_t>() < 0 ||
        (*off)[1].get<int64_t>() < 0)
      throw format_error(where + "data_offsets " + off->dump() +
                         ", expected [begin, end] of two non-negative integers");
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end)
      throw format_error(where + "data_offsets " + range_str(begin, end) +
                         " end before they begin");
    if (end > data_size)
      throw format_error(where + "data_offsets " + range_str(begin, end) +
                         " run past the end of the data section (" + std::to_string(data_size) +
                         " bytes)");

    int64_t n_bytes = 0;
    if (!checked_n_bytes(v.shape, v.dtype, &n_bytes))
      throw format_error(where + "shape " + shape_to_str(v.shape) + " x " + dtype_name(v.dtype) +
                         " overflows int64 bytes");
    if (uint64_t(n_bytes) != end - begin)
      throw format_error(where + "shape " + shape_to_str(v.shape) + " x " + dtype_name(v.dtype) +
                         " (" + std::to_string(dtype_size(v.dtype)) + " bytes) is " +
                         std::to_string(n_bytes) + " bytes, but data_offsets " +
                         range_str(begin, end) + " hold " + std::to_string(end - begin));
    v.data = data + begin;
    v.n_bytes = size_t(n_bytes);
    auto [it, inserted] = tensors_.emplace(name, std::move(v));
    (void)inserted;  // duplicate keys were refused by the parser
    spans.push_back({begin, end, &it->first});
  }

  // Sorted by offset, the tensors must tile the data section exactly: from 0, no gap, no
  // overlap, nothing after the last one. A gap or tail would be bytes nobody accounts for,
  // and an overlap would let two tensors alias.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    const std::string where =
        path + ": tensor '" + *s.name + "': data_offsets " + range_str(s.begin, s.end);
    if (s.begin < pos)
      throw format_error(where + " overlap tensor '" + *prev->name + "' " +
                         range_str(prev->begin, prev->end));
    if (s.begin > pos)
      throw format_error(where + " leave a gap of " + std::to_string(s.begin - pos) +
                         " bytes after " +
                         (prev ? "tensor '" + *prev->name + "' " + range_str(prev->begin, prev->end)
                               : std::string("the start of the data section")) +
                         " (tensors must be contiguous)");
    pos = s.end;
    prev = &s;
  }
  if (pos != data_size)
    throw format_error(path + ": " + std::to_string(data_size - pos) +
                       " bytes of trailing data after the last tensor (data section is " +
                       std::to_string(data_size) + " bytes, tensors cover " + std::to_string(pos) +
                       ")");
}

const TensorView& SafeTensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw format_error(path() + ": no tensor '" + name + "'");
  return it->second;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // The header keeps the given order so a reader's listing matches the data order. Callers
  // that want aligned views should put wider dtypes first: the format allows no padding
  // between tensors.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const std::string where = path + ": writing tensor '" + t.name + "': ";
    if (t.name.empty() || t.name == "__metadata__")
      throw format_error(where + "invalid tensor name");
    if (!names.insert(t.name).second) throw format_error(where + "duplicate tensor name");
    for (int64_t d : t.shape)
      if (d < 0) throw format_error(where + "negative dimension in shape " + shape_to_str(t.shape));
    int64_t n_bytes = 0;
    if (!checked_n_bytes(t.shape, t.dtype, &n_bytes))
      throw format_error(where + "shape " + shape_to_str(t.shape) + " overflows int64 bytes");
    if (uint64_t(n_bytes) != t.n_bytes)
      throw format_error(where + "shape " + shape_to_str(t.shape) + " x " + dtype_name(t.dtype) +
                         " is " + std::to_string(n_bytes) +
                         " bytes, but n_bytes = " + std::to_string(t.n_bytes));
    if (t.n_bytes > 0 && !t.data) throw format_error(where + "data is null");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.n_bytes}}};
    offset += t.n_bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    throw format_error(path + ": cannot encode the safetensors header: " + e.what());
  }
  // Pad with spaces to a multiple of 8, as the reference implementation does, so the data
  // section starts 8-byte aligned in the file (and in any page-aligned mapping of it).
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw format_error(tmp + ": cannot create: " + std::strerror(errno));
  auto fail = [&](const char* what) {
    int err = errno;
    std::fclose(f);
    std::remove(tmp.c_str());
    throw format_error(tmp + ": " + what + ": " + std::strerror(err));
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  if (std::fwrite(len, 1, 8, f) != 8) fail("write failed");
  if (std::fwrite(text.data(), 1, text.size(), f) != text.size()) fail("write failed");
  for (const TensorToWrite& t : tensors)
    if (t.n_bytes > 0 && std::fwrite(t.data, 1, t.n_bytes, f) != t.n_bytes) fail("write failed");
  if (std::fflush(f) != 0) fail("write failed");
  if (::fsync(fileno(f)) != 0) fail("fsync failed");
  if (std::fclose(f) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw format_error(tmp + ": close failed: " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw format_error(path + ": cannot rename " + tmp + " into place: " + std::strerror(err));
  }
}

}  // namespace sqz
