// The subcommands of `sqz`; each parses its own flags and returns the exit code.
#pragma once

namespace sqz::tools {

int cmd_generate(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);
int cmd_sweep(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_synth(int argc, char** argv);

}  // namespace sqz::tools
