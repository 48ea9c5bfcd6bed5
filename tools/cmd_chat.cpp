// sqz chat: an interactive conversation. Streaming replies, multi-line input (end a line
// with '\' to continue it, or wrap a block in """), /commands, Ctrl-C stops a reply and a
// second Ctrl-C at the prompt exits. When the conversation outgrows the context the oldest
// turns are dropped (the system prompt stays).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/generate.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

namespace {

std::atomic<int> g_sigint{0};
void on_sigint(int) { g_sigint.fetch_add(1); }

// Reads one line; returns false at end of input or when Ctrl-C arrived while waiting.
bool read_line(std::string* line) {
  line->clear();
  for (;;) {
    int c = std::fgetc(stdin);
    if (c == EOF) {
      if (ferror(stdin) && errno == EINTR) {
        clearerr(stdin);
        return false;
      }
      return !line->empty();
    }
    if (c == '\n') return true;
    line->push_back(char(c));
  }
}

const char* kHelp =
    "commands:\n"
    "  /help     this help\n"
    "  /clear    forget the conversation (keeps the system prompt)\n"
    "  /bye      exit (also /exit, /quit, Ctrl-D, or Ctrl-C twice at the prompt)\n"
    "input: end a line with \\ to continue it on the next line, or put \"\"\" alone on a\n"
    "line to start and end a multi-line block. Ctrl-C stops a reply.\n";

}  // namespace

int cmd_chat(int argc, char** argv) {
  cxxopts::Options o("sqz chat", "Chat with a model interactively.");
  add_model_options(o);
  add_sampling_options(o);
  o.add_options("chat")
      ("system-prompt", "system prompt (also -sys)", cxxopts::value<std::string>()->default_value(""))
      ("chat-template", "llama-2, zephyr, chatml or raw (default: from the model)",
       cxxopts::value<std::string>()->default_value(""))
      ("n,n-predict", "most tokens per reply (-1 = until the end of turn)",
       cxxopts::value<int>()->default_value("-1"))
      ("p,prompt", "first user message (then continue interactively)",
       cxxopts::value<std::string>());
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  EngineOptions eo = engine_options(r);
  Engine engine(eo);
  const Tokenizer& tok = engine.tokenizer();
  ChatTemplate tmpl;
  std::string tname = r["chat-template"].as<std::string>();
  if (!tname.empty())
    tmpl = chat_template_from_name(tname);
  else if (engine.model().metadata.count("sqz.chat_template"))
    tmpl = chat_template_from_name(engine.model().metadata.at("sqz.chat_template"));
  else
    tmpl = chat_template_guess(tok);
  SamplerOptions so = sampler_options(r);
  GenerateOptions go;
  go.n_predict = r["n-predict"].as<int>();
  go.stop_ids = chat_stop_ids(tok, tmpl);

  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;  // no SA_RESTART: a blocked read returns EINTR
  sigaction(SIGINT, &sa, nullptr);
  const bool tty = isatty(0) && isatty(1);

  std::vector<ChatMessage> history;
  const std::string sys = r["system-prompt"].as<std::string>();
  if (!sys.empty()) history.push_back({"system", sys});
  const size_t n_fixed = history.size();
  SeqState seq;
  Sampler sampler(so, engine.config().vocab_size);
  std::fprintf(stderr, "sqz chat: %s, template %s, context %d, %s. /help for commands.\n",
               engine.model().path.c_str(), chat_template_name(tmpl), engine.backend().ctx_size(),
               engine.backend().name().c_str());

  std::string first = r.count("prompt") ? r["prompt"].as<std::string>() : "";
  bool have_first = r.count("prompt") > 0;
  for (;;) {
    std::string msg;
    if (have_first) {
      msg = first;
      have_first = false;
      if (tty) std::printf("> %s\n", msg.c_str());
    } else {
      if (tty) std::printf("> "), std::fflush(stdout);
      std::string line;
      bool block = false;
      for (;;) {
        int sig_before = g_sigint.load();
        bool ok = read_line(&line);
        if (!ok) {
          if (g_sigint.load() != sig_before || (g_sigint.load() > 0 && ferror(stdin))) {
            if (g_sigint.load() >= 2) {
              std::printf("\n");
              return 0;
            }
            std::printf("\n(Ctrl-C again or /bye to exit)\n> ");
            std::fflush(stdout);
            msg.clear();
            continue;
          }
          std::printf("\n");
          return 0;  // end of input
        }
        g_sigint = 0;
        if (line == "\"\"\"") {
          if (block) break;
          block = true;
          continue;
        }
        if (block) {
          msg += line + "\n";
          continue;
        }
        if (!line.empty() && line.back() == '\\') {
          line.pop_back();
          msg += line + "\n";
          if (tty) std::printf(". "), std::fflush(stdout);
          continue;
        }
        msg += line;
        break;
      }
      if (block && !msg.empty() && msg.back() == '\n') msg.pop_back();
    }
    if (msg.empty()) continue;
    if (msg[0] == '/') {
      if (msg == "/bye" || msg == "/exit" || msg == "/quit") return 0;
      if (msg == "/help") {
        std::printf("%s", kHelp);
      } else if (msg == "/clear") {
        history.resize(n_fixed);
        std::printf("(conversation cleared)\n");
      } else {
        std::printf("unknown command %s (/help lists them)\n", msg.c_str());
      }
      continue;
    }
    history.push_back({"user", msg});
    // Drop the oldest turns until the prompt leaves room for a reply.
    const int reserve = std::min(256, engine.backend().ctx_size() / 4);
    std::vector<int> ids = render_chat(tok, tmpl, history, true);
    while (int(ids.size()) + reserve > engine.backend().ctx_size() && history.size() > n_fixed + 1) {
      size_t drop = n_fixed;  // a user turn and the reply that followed it
      history.erase(history.begin() + drop,
                    history.begin() + std::min(history.size() - 1, drop + 2));
      ids = render_chat(tok, tmpl, history, true);
      std::fprintf(stderr, "(context full: dropped the oldest turn)\n");
    }
    if (int(ids.size()) >= engine.backend().ctx_size()) {
      std::printf("(this message is %zu tokens and does not fit the context of %d; raise -c)\n",
                  ids.size(), engine.backend().ctx_size());
      history.pop_back();
      continue;
    }
    StreamDecoder dec(tok);
    std::string reply;
    g_sigint = 0;
    auto stats = generate(engine.backend(), {&seq}, {ids}, {&sampler}, go, [&](int, int token) {
      if (std::find(go.stop_ids.begin(), go.stop_ids.end(), token) != go.stop_ids.end())
        return true;
      std::string piece = dec.push(token);
      reply += piece;
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
      return g_sigint.load() == 0;
    });
    std::string tail = dec.flush();
    reply += tail;
    std::fputs(tail.c_str(), stdout);
    const GenerateStats& s = stats[0];
    double tps = s.decode_s > 0 ? (s.n_gen - 1) / s.decode_s : 0;
    if (s.stop_reason == "interrupted") std::printf(" [stopped]");
    std::printf("\n");
    std::fprintf(stderr, "[%d tokens, %.1f tok/s, prompt %d new tokens in %.0f ms%s]\n", s.n_gen,
                 tps, s.n_prefill, s.prefill_s * 1e3,
                 s.stop_reason == "context" ? ", context full" : "");
    g_sigint = 0;
    history.push_back({"assistant", reply});
  }
}

}  // namespace sqz::tools
