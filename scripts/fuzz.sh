#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), bounded in time, memory and
# per-input time; fails on the first crash, leak, timeout or out-of-memory, printing the input
# that caused it and how to replay it. Installs cargo-fuzz if it is missing.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The kept corpus (fuzz/corpus/<target>/) is read, never written: what a run discovers goes
# to a scratch directory, so CI leaves the tree clean. Keep an input worth keeping by copying
# it into fuzz/corpus/<target>/ under a name saying what it found; tests/it/fuzz_corpus.rs then
# runs it in the normal test suite.
#
# Environment: PBCHAT_FUZZ_SANITIZER (address | none; default address), PBCHAT_FUZZ_RSS_MB
# (default 2048), PBCHAT_FUZZ_KEEP (a directory: keep each target's discovered inputs there).
# cargo-fuzz needs nightly features; a stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(client_frame heartbeat replication config log_recovery)
fi
sanitizer=${PBCHAT_FUZZ_SANITIZER:-address}
rss_mb=${PBCHAT_FUZZ_RSS_MB:-2048}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd fuzz
echo "== fuzz build (sanitizer $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s (sanitizer $sanitizer)"
  found="$scratch/$target"
  mkdir -p "$found" "artifacts/$target"
  log="$scratch/$target.log"
  # -timeout: one input taking this long is a hang; -rss_limit_mb: memory of the whole run;
  # -max_len: inputs up to 64 KiB (a log of a few segments, a long client stream).
  set +e
  cargo fuzz run --sanitizer "$sanitizer" "$target" "$found" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  if [ "$status" -ne 0 ]; then
    # The panic (or sanitizer report), then libFuzzer's own account of the failure.
    grep -m 1 -A 12 -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" || true
    echo "..."
    grep -E '^(SUMMARY|MS:|artifact_prefix)|^stat::' "$log" || tail -n 40 "$log"
    artifact=$(sed -n 's/.*Test unit written to \(\S*\).*/\1/p' "$log" | tail -n 1)
    echo
    echo "fuzz $target: FAILED (exit $status)"
    if [ -n "$artifact" ]; then
      echo "reproducer: $artifact ($(wc -c <"$artifact") bytes), base64:"
      base64 -w 0 "$artifact" | head -c 4096
      echo
      echo "replay: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target $artifact)"
    fi
    exit 1
  fi
  # libFuzzer's last status line: "#RUNS<tab>DONE cov: ... ft: ... corp: ... exec/s: ...".
  final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed 's/^#[0-9]*[[:space:]]*DONE *//' || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  line="$target: ${runs:-?} runs in ${seconds}s; ${final:-no final line}"
  echo "$line"
  summary+=("$line")
  if [ -n "${PBCHAT_FUZZ_KEEP:-}" ]; then
    mkdir -p "$PBCHAT_FUZZ_KEEP/$target"
    cp -r "$found/." "$PBCHAT_FUZZ_KEEP/$target/"
  fi
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
