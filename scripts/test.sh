#!/usr/bin/env bash
# The same set-up as setup.sh, then every test (GPU tests skip cleanly without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "$@"
ctest --test-dir build --output-on-failure -j"$(nproc 2>/dev/null || echo 2)"
