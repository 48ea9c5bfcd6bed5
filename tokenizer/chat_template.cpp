// Chat templates: a conversation rendered to token ids, with BOS/EOS (and <|im_start|> and
// friends, when the vocabulary has them) as ids and everything between them encoded as
// text. Each text segment is encoded on its own, so it gets SentencePiece's dummy-prefix
// '▁' like every encode() does; that is how Meta's chat_completion tokenizes a LLaMA-2
// dialog (one encode per [INST] turn) and what HF's LlamaTokenizer (legacy=True) produces
// for the text after a special token.
//
//   llama-2  <s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
//            <s>[INST] {user2} [/INST]
//   zephyr   <s><|system|>\n{sys}</s>\n<|user|>\n{msg}</s>\n<|assistant|>\n{answer}</s>\n
//            ... <|assistant|>\n
//   chatml   <s>?<|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
//   raw      <s>{content}{content}...
//
// Test: ./build/tests/test_tokenizer --gtest_filter='*Chat*'
#include <algorithm>
#include <cctype>

#include "tokenizer/tokenizer.h"

namespace sqz {

namespace {

// Strips what Python's str.strip() strips from ASCII text, as HF's llama-2 template does
// with `content.strip()`.
std::string strip(const std::string& s) {
  const char* ws = " \t\n\v\f\r";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// Collects ids and text; text is encoded (without BOS) when an id interrupts it.
class ChatBuilder {
 public:
  explicit ChatBuilder(const Tokenizer& tok) : tok_(tok) {}

  void text(const std::string& s) { text_ += s; }
  void id(int id) {
    flush_text();
    ids_.push_back(id);
  }
  void bos_if_any() {
    if (tok_.bos_id() >= 0) id(tok_.bos_id());
  }
  void eos(const char* template_name) {
    if (tok_.eos_id() < 0) {
      throw tokenizer_error(std::string("chat template ") + template_name +
                            " needs an EOS id, and this tokenizer has none");
    }
    id(tok_.eos_id());
  }
  // A marker such as <|im_start|> is one id when the vocabulary has it, else plain text.
  void marker(const std::string& m) {
    const int mid = tok_.piece_to_id(m);
    if (mid >= 0) {
      id(mid);
    } else {
      text(m);
    }
  }
  std::vector<int> finish() {
    flush_text();
    return std::move(ids_);
  }

 private:
  void flush_text() {
    if (text_.empty()) return;
    const std::vector<int> seg = tok_.encode(text_, false);
    ids_.insert(ids_.end(), seg.begin(), seg.end());
    text_.clear();
  }

  const Tokenizer& tok_;
  std::vector<int> ids_;
  std::string text_;
};

// HF's llama-2 template: an optional system message first, then user/assistant strictly
// alternating, starting with user. The system prompt is folded into the first user turn.
std::vector<int> render_llama2(const Tokenizer& tok, const std::vector<ChatMessage>& msgs) {
  size_t first = 0;
  std::string system;
  bool has_system = false;
  if (msgs[0].role == "system") {
    system = msgs[0].content;
    has_system = true;
    first = 1;
  }
  if (first == msgs.size()) {
    throw tokenizer_error("chat template llama-2: the system prompt needs a user message after it");
  }
  ChatBuilder b(tok);
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool expect_user = (i - first) % 2 == 0;
    if (m.role != (expect_user ? "user" : "assistant")) {
      throw tokenizer_error("chat template llama-2: message " + std::to_string(i) + " has role '" +
                            m.role + "', expected '" + (expect_user ? "user" : "assistant") +
                            "' (optional system first, then user/assistant alternating)");
    }
    if (expect_user) {
      std::string content = m.content;
      if (i == first && has_system) {
        content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
      }
      b.bos_if_any();
      b.text("[INST] " + strip(content) + " [/INST]");
    } else {
      b.text(" " + strip(m.content) + " ");
      b.eos("llama-2");
    }
  }
  return b.finish();
}

std::vector<int> render_zephyr(const Tokenizer& tok, const std::vector<ChatMessage>& msgs,
                               bool add_generation_prompt) {
  ChatBuilder b(tok);
  b.bos_if_any();
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      throw tokenizer_error("chat template zephyr: message " + std::to_string(i) + " has role '" +
                            m.role + "', expected system, user or assistant");
    }
    b.marker("<|" + m.role + "|>");
    b.text("\n" + m.content);
    b.eos("zephyr");
    b.text("\n");
  }
  if (add_generation_prompt) {
    b.marker("<|assistant|>");
    b.text("\n");
  }
  return b.finish();
}

std::vector<int> render_chatml(const Tokenizer& tok, const std::vector<ChatMessage>& msgs,
                               bool add_generation_prompt) {
  ChatBuilder b(tok);
  b.bos_if_any();
  for (const ChatMessage& m : msgs) {
    b.marker("<|im_start|>");
    b.text(m.role + "\n" + m.content);
    b.marker("<|im_end|>");
    b.text("\n");
  }
  if (add_generation_prompt) {
    b.marker("<|im_start|>");
    b.text("assistant\n");
  }
  return b.finish();
}

// For base models: no roles, no markers, just the text after one BOS.
std::vector<int> render_raw(const Tokenizer& tok, const std::vector<ChatMessage>& msgs) {
  ChatBuilder b(tok);
  b.bos_if_any();
  for (const ChatMessage& m : msgs) b.text(m.content);
  return b.finish();
}

}  // namespace

ChatTemplate chat_template_from_name(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (n == "llama-2" || n == "llama2") return ChatTemplate::LLAMA2;
  if (n == "zephyr") return ChatTemplate::ZEPHYR;
  if (n == "chatml") return ChatTemplate::CHATML;
  if (n == "raw") return ChatTemplate::RAW;
  throw tokenizer_error("unknown chat template '" + name +
                        "', expected one of: llama-2 (or llama2), zephyr, chatml, raw");
}

const char* chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::LLAMA2:
      return "llama-2";
    case ChatTemplate::ZEPHYR:
      return "zephyr";
    case ChatTemplate::CHATML:
      return "chatml";
    case ChatTemplate::RAW:
      return "raw";
  }
  return "unknown";
}

ChatTemplate chat_template_guess(const Tokenizer& tok) {
  if (tok.piece_to_id("<|im_start|>") >= 0) return ChatTemplate::CHATML;
  if (tok.piece_to_id("<|user|>") >= 0) return ChatTemplate::ZEPHYR;
  return ChatTemplate::LLAMA2;
}

std::vector<int> render_chat(const Tokenizer& tok, ChatTemplate t,
                             const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  if (messages.empty()) {
    throw tokenizer_error(std::string("chat template ") + chat_template_name(t) +
                          ": no messages to render");
  }
  switch (t) {
    case ChatTemplate::LLAMA2:
      // The prompt already ends in "[/INST]", after which the answer comes.
      return render_llama2(tok, messages);
    case ChatTemplate::ZEPHYR:
      return render_zephyr(tok, messages, add_generation_prompt);
    case ChatTemplate::CHATML:
      return render_chatml(tok, messages, add_generation_prompt);
    case ChatTemplate::RAW:
      return render_raw(tok, messages);
  }
  throw tokenizer_error("render_chat: invalid template value");
}

std::vector<int> chat_stop_ids(const Tokenizer& tok, ChatTemplate t) {
  std::vector<int> ids;
  if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  if (t == ChatTemplate::CHATML) {
    const int im_end = tok.piece_to_id("<|im_end|>");
    if (im_end >= 0 && std::find(ids.begin(), ids.end(), im_end) == ids.end()) {
      ids.push_back(im_end);
    }
  }
  return ids;
}

}  // namespace sqz
