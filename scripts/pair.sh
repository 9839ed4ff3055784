#!/usr/bin/env bash
# Builds pbchat and runs the local example pair in the foreground: node a
# (config/primary.toml, clients on 127.0.0.1:7400) and node b (config/backup.toml, :7410).
# The file names say where each node starts on empty data, not what it is now: a restart or
# a fail-over moves the primary role. `scripts/pid-of.sh primary` finds the node that is.
#
# Both nodes stop when either one exits (this script then exits 1), and on Ctrl-C or TERM
# (exit 0): first the node that is backup at that moment, so that the primary does not
# hand over to a node that is leaving too (its clients would get a second goodbye), then
# the primary, which commits what is pending and says goodbye to its clients.
#
# Usage: scripts/pair.sh [CONFIG_A CONFIG_B]
#   CONFIG_A CONFIG_B  other config files for the two nodes; their paths are taken from the
#                      current directory and their secret_file must exist
#                      (pbchatd --gen-secret FILE). Default: the shipped configs, run from
#                      the repository, with data/pair.secret made if missing.
#   PBCHAT_BIN_DIR=DIR use pbchatd and pbchatctl from DIR and build nothing (tests, or an
#                      installed copy: PBCHAT_BIN_DIR=/usr/bin). Default: cargo build
#                      --release, then target/release.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${PBCHAT_BIN_DIR:-}" ]; then
  bin_dir=$PBCHAT_BIN_DIR
else
  (cd "$root" && cargo build --release --bins)
  bin_dir=$root/target/release
fi
pbchatd=$bin_dir/pbchatd
pbchatctl=$bin_dir/pbchatctl
case $# in
  0)
    # The shipped configs' relative paths (data/...) are from the repository.
    cd "$root"
    config_a=config/primary.toml
    config_b=config/backup.toml
    # The pair's shared secret (both configs name it); made once, mode 0600.
    "$pbchatd" --gen-secret data/pair.secret >/dev/null
    ;;
  2)
    config_a=$1
    config_b=$2
    ;;
  *)
    echo "usage: scripts/pair.sh [CONFIG_A CONFIG_B]" >&2
    exit 2
    ;;
esac
for config in "$config_a" "$config_b"; do
  "$pbchatd" --check -c "$config" >/dev/null
done

# Own sessions: a terminal's Ctrl-C reaches only this script, which stops each node once.
setsid "$pbchatd" -c "$config_a" &
pid_a=$!
setsid "$pbchatd" -c "$config_b" &
pid_b=$!

# The role a node has now (`primary`, `backup`), or `unknown` if it does not answer.
role_of() {
  "$pbchatctl" -c "$1" role 2>/dev/null || echo unknown
}

# Sends TERM to a node and waits for it to exit (a no-op for one that exited already).
stop_node() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Waits until the node has seen its replication link close, at most 40 x 50 ms (a link
# ends within a few ms of its peer's exit), so that a primary does not offer a hand-over
# to the backup that just left (it would wait 2 s for an answer).
wait_link_down() {
  local _
  for _ in $(seq 40); do
    "$pbchatctl" -c "$1" status --json 2>/dev/null | grep -q '"link":false' && return 0
    sleep 0.05
  done
}

stopped=0
stop() {
  [ "$stopped" = 1 ] && return
  stopped=1
  # A second Ctrl-C while stopping: a second TERM, which makes a stopping node exit at once.
  trap 'kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true' INT TERM
  # The backup first, whichever node that is now; then the primary.
  local first=$pid_b second=$pid_a second_config=$config_a
  if [ "$(role_of "$config_b")" = primary ] || [ "$(role_of "$config_a")" = backup ]; then
    first=$pid_a
    second=$pid_b
    second_config=$config_b
  fi
  stop_node "$first"
  if kill -0 "$second" 2>/dev/null; then
    wait_link_down "$second_config"
  fi
  stop_node "$second"
  echo "pbchat pair stopped"
}
trap stop INT TERM

echo "pbchat pair running: node a ($config_a) pid $pid_a, node b ($config_b) pid $pid_b; Ctrl-C stops both"
echo "  which one is primary: $pbchatctl -c $config_a role (or scripts/pid-of.sh primary)"
# The value of `key` in a config's `[section]` (empty when absent).
config_value() {
  awk -v section="[$2]" -v key="$3" '
    /^\[/ { inside = ($0 == section) }
    inside && $0 ~ "^" key " *=" { gsub(/^[^=]*= *"?|"? *(#.*)?$/, ""); print }' "$1"
}
for config in "$config_a" "$config_b"; do
  web=$(config_value "$config" web listen)
  if [ -n "$web" ]; then
    # The web listener speaks TLS with the client listener's certificate when it has one.
    scheme=http
    if [ -n "$(config_value "$config" client tls_cert)" ]; then
      scheme=https
    fi
    echo "  chat in a browser: $scheme://$web/ ($config)"
  fi
done
# Returns when either node exits, or when Ctrl-C or TERM has run `stop`.
status=0
wait -n -p exited "$pid_a" "$pid_b" || status=$?
if [ "$stopped" = 1 ]; then
  exit 0
fi
name="a ($config_a)"
if [ "${exited:-}" = "$pid_b" ]; then
  name="b ($config_b)"
fi
echo "pbchat pair: node $name exited with status $status; stopping the other node" >&2
stop
exit 1
