// A thin wrapper over SentencePiece: encode/decode with BOS/EOS handling, streaming-safe
// detokenisation and chat templates.
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace sqz {

struct tokenizer_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);         // throws tokenizer_error
  static Tokenizer from_bytes(const std::string& model_bytes, const std::string& source);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_bos prepends BOS unless the text already encodes to a leading BOS (no double BOS).
  std::vector<int> encode(const std::string& text, bool add_bos) const;
  // As Hugging Face transformers (>= 5) tokenizes: like encode(), except that no dummy-prefix
  // space is added when the text already starts with a space (its Metaspace pre-tokenizer
  // prepends "▁" only to text that does not begin with one). encode() keeps SentencePiece's
  // (and llama.cpp's) rule of always adding it, which the reference numbers of sqz's test
  // models were computed with; the two differ only for text that starts with a space.
  std::vector<int> encode_hf(const std::string& text, bool add_bos) const;
  std::string decode(const std::vector<int>& ids) const;  // as SentencePiece decodes
  std::string piece(int id) const;                         // raw piece, e.g. "▁The", "<0x0A>"
  int bos_id() const;
  int eos_id() const;
  int vocab_size() const;
  bool is_control(int id) const;  // <s>, </s>, ... (never printed)
  int piece_to_id(const std::string& piece) const;  // -1 when absent
  const std::string& model_bytes() const { return bytes_; }

 private:
  friend class StreamDecoder;
  enum class PieceKind { NORMAL, CONTROL, UNKNOWN, BYTE };
  // How SentencePiece's decode treats a leading '▁' at the start of the output; it
  // depends on the model's normaliser flags, so it is probed once at load.
  enum class LeadingSpace { KEEP, DROP_FIRST, DROP_ALL };

  Tokenizer();
  void check_id(int id) const;         // throws tokenizer_error outside [0, vocab_size)
  PieceKind piece_kind(int id) const;  // checks the id
  int byte_value(int id) const;        // 0..255 for a byte piece "<0xNN>"

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string bytes_;
  std::string source_;  // file name (or what the bytes came from), for error messages
  LeadingSpace leading_space_ = LeadingSpace::DROP_FIRST;
};

// Turns a stream of token ids into text pieces that never split a UTF-8 character:
// byte-fallback pieces are buffered until their character is complete.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Returns the text that became printable with this token (possibly empty).
  std::string push(int id);
  // Whatever is still buffered (an incomplete character comes out as U+FFFD).
  std::string flush();
  // Set when the next piece starts the output, so its leading space is dropped as
  // SentencePiece does at the start of a decode.
  void reset(bool at_start = true);

 private:
  // Moves the complete characters of pending_ to the result; with at_end, an incomplete
  // tail is final too (its bytes become U+FFFD, as SentencePiece does).
  std::string take_complete(bool at_end);

  const Tokenizer& tok_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
  bool at_start_ = true;
  // Mirror SentencePiece's decode state: whether the previous piece consumed the
  // leading space, and whether any text (or byte) has been produced since reset().
  bool bos_ws_seen_ = false;
  bool text_started_ = false;
};

enum class ChatTemplate { LLAMA2, ZEPHYR, CHATML, RAW };

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Parses "llama-2" / "llama2", "zephyr", "chatml", "raw"; throws tokenizer_error naming the
// accepted values otherwise.
ChatTemplate chat_template_from_name(const std::string& name);
const char* chat_template_name(ChatTemplate t);
// Guess from the tokenizer's vocabulary (chatml when <|im_start|> is a piece, zephyr when
// <|user|> is), llama-2 otherwise.
ChatTemplate chat_template_guess(const Tokenizer& tok);

// Renders a conversation to token ids. BOS/EOS are emitted as ids, never as text.
// add_generation_prompt appends the assistant header so the model's reply comes next.
std::vector<int> render_chat(const Tokenizer& tok, ChatTemplate t,
                             const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt);

// The ids that end an assistant turn for this template (EOS, and <|im_end|> for chatml
// when the vocabulary has it).
std::vector<int> chat_stop_ids(const Tokenizer& tok, ChatTemplate t);

}  // namespace sqz
