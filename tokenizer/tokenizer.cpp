// Tokenizer: SentencePiece encode/decode with BOS handling, and StreamDecoder, which turns
// one token id at a time into text exactly as SentencePiece's decode of the whole sequence
// would, without ever returning half of a UTF-8 character.
//
// Test: ./build/tests/test_tokenizer
#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace sqz {

namespace {

// U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's visible stand-in for a space.
constexpr const char* kSpaceSymbol = "\xE2\x96\x81";
constexpr size_t kSpaceSymbolLen = 3;
// U+FFFD REPLACEMENT CHARACTER, SentencePiece's surface for a byte that is not part of a
// valid UTF-8 character.
constexpr const char* kReplacementChar = "\xEF\xBF\xBD";

bool starts_with(const std::string& s, const char* prefix, size_t n) {
  return s.size() >= n && s.compare(0, n, prefix, n) == 0;
}

std::string replace_space_symbols(const std::string& piece, size_t from) {
  std::string out;
  out.reserve(piece.size());
  for (size_t i = from; i < piece.size();) {
    if (piece.compare(i, kSpaceSymbolLen, kSpaceSymbol) == 0) {
      out += ' ';
      i += kSpaceSymbolLen;
    } else {
      out += piece[i++];
    }
  }
  return out;
}

bool is_trail_byte(unsigned char b) { return (b & 0xC0) == 0x80; }

}  // namespace

// ---------------------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    throw tokenizer_error("cannot open tokenizer file '" + path + "': " + std::strerror(errno));
  }
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw tokenizer_error("cannot read tokenizer file '" + path + "'");
  return from_bytes(ss.str(), path);
}

Tokenizer Tokenizer::from_bytes(const std::string& model_bytes, const std::string& source) {
  Tokenizer tok;
  if (model_bytes.empty()) {
    throw tokenizer_error("'" + source + "' is empty, expected a SentencePiece model");
  }
  const auto status = tok.sp_->LoadFromSerializedProto(model_bytes);
  if (!status.ok()) {
    throw tokenizer_error("'" + source + "' is not a SentencePiece model (" +
                          std::to_string(model_bytes.size()) + " bytes): " + status.ToString());
  }
  if (tok.sp_->GetPieceSize() <= 0) {
    throw tokenizer_error("'" + source + "' is a SentencePiece model with no pieces");
  }
  tok.bytes_ = model_bytes;
  tok.source_ = source;

  // SentencePiece's decode drops the leading '▁' at the start of the output when the model
  // adds a dummy prefix (LLaMA), keeps dropping until text appears when it also removes
  // extra whitespace, and keeps it otherwise. The flags live in the model proto, which the
  // installed headers do not expose, so ask decode itself: "▁" twice decodes to "" (drop
  // all), " " (drop first) or "  " (keep).
  const int space_id = tok.piece_to_id(kSpaceSymbol);
  if (space_id >= 0 && tok.piece_kind(space_id) == PieceKind::NORMAL) {
    const std::string d = tok.decode({space_id, space_id});
    tok.leading_space_ = d.empty()       ? LeadingSpace::DROP_ALL
                         : d.size() == 1 ? LeadingSpace::DROP_FIRST
                                         : LeadingSpace::KEEP;
  } else {
    for (int id = 0; id < tok.vocab_size(); ++id) {
      const std::string& p = tok.sp_->IdToPiece(id);
      if (tok.piece_kind(id) == PieceKind::NORMAL && p.size() > kSpaceSymbolLen &&
          starts_with(p, kSpaceSymbol, kSpaceSymbolLen)) {
        const std::string d = tok.decode({id});
        tok.leading_space_ = d[0] == ' ' ? LeadingSpace::KEEP : LeadingSpace::DROP_FIRST;
        break;
      }
    }
  }
  return tok;
}

void Tokenizer::check_id(int id) const {
  if (id < 0 || id >= vocab_size()) {
    throw tokenizer_error("token id " + std::to_string(id) + " is outside the vocabulary of '" +
                          source_ + "' (" + std::to_string(vocab_size()) + " pieces)");
  }
}

Tokenizer::PieceKind Tokenizer::piece_kind(int id) const {
  check_id(id);
  if (sp_->IsControl(id)) return PieceKind::CONTROL;
  if (sp_->IsUnknown(id)) return PieceKind::UNKNOWN;
  if (sp_->IsByte(id)) return PieceKind::BYTE;
  return PieceKind::NORMAL;  // normal, user-defined and unused pieces all print their text
}

int Tokenizer::byte_value(int id) const {
  // Byte pieces are spelled "<0xNN>" with two hex digits.
  const std::string& p = sp_->IdToPiece(id);
  char* end = nullptr;
  const long v = p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>'
                     ? std::strtol(p.c_str() + 3, &end, 16)
                     : -1;
  if (v < 0 || v > 255 || end != p.c_str() + 5) {
    throw tokenizer_error("byte piece " + std::to_string(id) + " of '" + source_ +
                          "' is spelled '" + p + "', expected <0xNN>");
  }
  return static_cast<int>(v);
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_bos) const {
  // Text is always text: SentencePiece never turns a literal "<s>" into the BOS id, so a
  // prompt cannot smuggle in control tokens.
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) {
    throw tokenizer_error("cannot encode text with '" + source_ + "': " + status.ToString());
  }
  const int bos = bos_id();
  if (add_bos && bos >= 0 && (ids.empty() || ids[0] != bos)) ids.insert(ids.begin(), bos);
  return ids;
}

std::vector<int> Tokenizer::encode_hf(const std::string& text, bool add_bos) const {
  if (text.empty() || text[0] != ' ') return encode(text, add_bos);
  // " x..." is "▁x..." for HF: SentencePiece's own dummy prefix stands in for the space.
  std::vector<int> ids;
  const int space = piece_to_id("\xe2\x96\x81");  // "▁"
  if (text.size() == 1 && space >= 0) {
    ids.push_back(space);
  } else {
    ids = encode(text.substr(1), false);
  }
  const int bos = bos_id();
  if (add_bos && bos >= 0) ids.insert(ids.begin(), bos);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids) check_id(id);
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  if (!status.ok()) {
    throw tokenizer_error("cannot decode ids with '" + source_ + "': " + status.ToString());
  }
  return text;
}

std::string Tokenizer::piece(int id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

int Tokenizer::bos_id() const { return sp_->bos_id(); }
int Tokenizer::eos_id() const { return sp_->eos_id(); }
int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

bool Tokenizer::is_control(int id) const {
  const PieceKind kind = piece_kind(id);
  return kind == PieceKind::CONTROL || kind == PieceKind::UNKNOWN;
}

int Tokenizer::piece_to_id(const std::string& piece) const {
  // PieceToId answers the <unk> id for an unknown piece; only a round trip tells them apart.
  const int id = sp_->PieceToId(piece);
  if (id < 0 || id >= vocab_size() || sp_->IdToPiece(id) != piece) return -1;
  return id;
}

// ---------------------------------------------------------------------------------------
// StreamDecoder
//
// SentencePiece's decode (sentencepiece_processor.cc, Decode) walks the pieces once:
//   - a run of byte pieces becomes bytes, cut into UTF-8 characters; a byte that does not
//     start a complete, valid character becomes U+FFFD on its own;
//   - control pieces print nothing, <unk> prints its surface (" ⁇ ");
//   - before each non-byte piece, "at start" ends once text exists or the previous piece
//     consumed its leading '▁'; at start, a leading '▁' is dropped;
//   - every other '▁' becomes ' '.
// push() applies the same rules one piece at a time. The only state that crosses pieces
// is the unfinished byte run (at most 3 bytes: a character is at most 4) and two flags.

void StreamDecoder::reset(bool at_start) {
  pending_.clear();
  at_start_ = at_start;
  bos_ws_seen_ = false;
  text_started_ = false;
}

std::string StreamDecoder::take_complete(bool at_end) {
  std::string out;
  const size_t n = pending_.size();
  size_t off = 0;
  while (off < n) {
    const auto b0 = static_cast<unsigned char>(pending_[off]);
    size_t len = 0;  // length announced by the lead byte; 0 when it cannot lead
    uint32_t min_cp = 0;
    if (b0 < 0x80) {
      len = 1;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2;
      min_cp = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3;
      min_cp = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4;
      min_cp = 0x10000;
    }
    if (len == 1) {
      out += pending_[off++];
      continue;
    }
    // A non-trail byte inside the announced length makes the lead invalid whatever follows.
    const size_t avail = n - off;
    bool broken = len == 0;
    for (size_t i = 1; !broken && i < len && i < avail; ++i) {
      broken = !is_trail_byte(static_cast<unsigned char>(pending_[off + i]));
    }
    if (!broken && avail < len) {
      if (!at_end) break;  // wait for the rest of the character
      broken = true;       // the run ended early: SentencePiece gives U+FFFD per byte
    }
    if (!broken) {
      uint32_t cp = b0 & (0x7F >> len);
      for (size_t i = 1; i < len; ++i) {
        cp = (cp << 6) | (static_cast<unsigned char>(pending_[off + i]) & 0x3F);
      }
      // Overlong forms, surrogates and code points past U+10FFFF are invalid too.
      broken = cp < min_cp || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF;
    }
    if (broken) {
      out += kReplacementChar;
      off += 1;
    } else {
      out.append(pending_, off, len);
      off += len;
    }
  }
  pending_.erase(0, off);
  return out;
}

std::string StreamDecoder::push(int id) {
  const Tokenizer::PieceKind kind = tok_.piece_kind(id);
  if (kind == Tokenizer::PieceKind::BYTE) {
    pending_ += static_cast<char>(tok_.byte_value(id));
    text_started_ = true;  // a byte always ends up as text, if only as U+FFFD
    return take_complete(false);
  }

  // A non-byte piece ends the byte run: whatever is still incomplete is final.
  std::string out = take_complete(true);
  if (bos_ws_seen_ || text_started_) at_start_ = false;

  std::string surface;
  bool consumed_space = false;
  switch (kind) {
    case Tokenizer::PieceKind::CONTROL:
      break;
    case Tokenizer::PieceKind::UNKNOWN:
      surface = tok_.decode({id});
      break;
    default: {
      const std::string& piece = tok_.sp_->IdToPiece(id);
      size_t from = 0;
      if (at_start_ && tok_.leading_space_ != Tokenizer::LeadingSpace::KEEP &&
          starts_with(piece, kSpaceSymbol, kSpaceSymbolLen)) {
        from = kSpaceSymbolLen;
        // When the model also removes extra whitespace, later leading spaces go too.
        consumed_space = tok_.leading_space_ == Tokenizer::LeadingSpace::DROP_FIRST;
      }
      surface = replace_space_symbols(piece, from);
    }
  }
  bos_ws_seen_ = consumed_space;
  if (!surface.empty()) text_started_ = true;
  out += surface;
  return out;
}

std::string StreamDecoder::flush() { return take_complete(true); }

}  // namespace sqz
