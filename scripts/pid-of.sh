#!/usr/bin/env bash
# Prints the process id of the local pair's node that is ROLE (primary or backup) now,
# found by asking each node (`pbchatctl role`): config/primary.toml's node is primary only
# until a restart or a fail-over moves the role.
#
#   kill -9 $(scripts/pid-of.sh primary)     # a fail-over the hard way
#
# Usage: scripts/pid-of.sh primary|backup [CONFIG...]
#   CONFIG...          the nodes' config files (from the current directory). Default: the
#                      shipped config/primary.toml and config/backup.toml, from the
#                      repository.
#   PBCHAT_BIN_DIR=DIR where pbchatctl is. Default: target/release (scripts/pair.sh builds it).
# Exits 1, saying so on stderr, when no node answers with that role.
set -euo pipefail
usage() {
  echo "usage: scripts/pid-of.sh primary|backup [CONFIG...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
role=$1
shift
case $role in
  primary | backup) ;;
  *) usage ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
pbchatctl=${PBCHAT_BIN_DIR:-$root/target/release}/pbchatctl
if [ $# -eq 0 ]; then
  cd "$root"
  set -- config/primary.toml config/backup.toml
fi
for config in "$@"; do
  if [ "$("$pbchatctl" -c "$config" role 2>/dev/null)" = "$role" ]; then
    exec "$pbchatctl" -c "$config" pid
  fi
done
echo "scripts/pid-of.sh: no running node of $* answers as $role (pbchatctl -c FILE status tells more)" >&2
exit 1
