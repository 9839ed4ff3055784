#!/usr/bin/env bash
# Builds pbchat and runs the local primary+backup pair from config/ in the foreground.
# Ctrl-C (or TERM) stops both cleanly: each node gets SIGTERM, says goodbye to its
# clients, and exits; this script waits for both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release/pbchatd
# The pair's shared secret (both configs name it); made once, mode 0600.
"$bin" --gen-secret data/pair.secret >/dev/null
for role in primary backup; do
  "$bin" --check -c "config/$role.toml" >/dev/null
done
# Own sessions: a terminal Ctrl-C reaches only this script, which stops each node once.
setsid "$bin" -c config/primary.toml & primary=$!
setsid "$bin" -c config/backup.toml & backup=$!
stopped=0
stop() {
  [ "$stopped" = 1 ] && return
  stopped=1
  trap - INT TERM
  # The backup first, so that the primary does not try to hand over to a node that is
  # leaving too; then the primary, which commits what is pending and says goodbye.
  kill -TERM "$backup" 2>/dev/null || true
  wait "$backup" 2>/dev/null || true
  kill -TERM "$primary" 2>/dev/null || true
  wait "$primary" 2>/dev/null || true
  echo "pbchat pair stopped"
}
trap stop INT TERM
echo "pbchat pair running: primary clients on 127.0.0.1:7400, backup on 127.0.0.1:7410 (Ctrl-C stops both)"
# Wait for both: one node killed on purpose (try a fail-over: kill -9 the primary's pid and
# restart it by hand with target/release/pbchatd -c config/primary.toml) leaves the other up.
wait "$primary" "$backup" || true
stop
