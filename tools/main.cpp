// sqz: LLaMA inference for SqueezeLLM-quantized models. Dispatches to the subcommands and is
// the one place that turns an exception into a one-line message and a non-zero exit.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "tools/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"generate", sqz::tools::cmd_generate, "generate text from a prompt or a file of prompts"},
    {"chat", sqz::tools::cmd_chat, "interactive chat with streaming output"},
    {"perplexity", sqz::tools::cmd_perplexity, "perplexity of a text file (gptq or llamacpp)"},
    {"quantize", sqz::tools::cmd_quantize, "quantize a checkpoint into a packed .sqz file"},
    {"calibrate", sqz::tools::cmd_calibrate, "squared gradients of a checkpoint over a text (for quantize)"},
    {"sweep", sqz::tools::cmd_sweep, "quantize at several settings and compare perplexity vs size"},
    {"inspect", sqz::tools::cmd_inspect, "print a model's config, tensors and sizes"},
    {"bench", sqz::tools::cmd_bench, "prompt and decode throughput (llama-bench style)"},
    {"synth", sqz::tools::cmd_synth, "write a synthetic packed model with real LLaMA shapes"},
};

void usage() {
  std::printf("usage: sqz <command> [options]   (sqz <command> --help for its options)\n\n");
  for (const Command& c : kCommands) std::printf("  %-12s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 1 : 0;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "sqz %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "sqz: unknown command '%s'\n\n", argv[1]);
  usage();
  return 1;
}
