// Shared helpers for the test suites: where the shared assets are, and how a missing one
// is treated (skip on a developer machine, fail under CI=true).
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

namespace sqz::test {

// $SQZ_SHARED, else ../shared beside the source checkout.
inline std::string shared_dir() {
  const char* env = std::getenv("SQZ_SHARED");
  if (env && *env) return env;
  return std::string(SQZ_SOURCE_DIR) + "/../shared";
}

inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

inline bool file_exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline std::string temp_path(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  return std::string(tmp && *tmp ? tmp : "/tmp") + "/sqz_test_" + std::to_string(getpid()) +
         "_" + name;
}

}  // namespace sqz::test

// Resolves a path under the shared assets into `var`; skips the test when it is missing,
// or fails it under CI=true.
#define SQZ_SHARED_ASSET(var, rel)                                                    \
  std::string var = sqz::test::shared_dir() + "/" + (rel);                            \
  if (!sqz::test::file_exists(var)) {                                                 \
    if (sqz::test::in_ci()) FAIL() << "missing shared asset (CI=true): " << var;      \
    GTEST_SKIP() << "shared asset not found: " << var;                               \
  }
