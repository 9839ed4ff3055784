#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests against the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
