#!/usr/bin/env bash
# Drives the built .deb under a real systemd, the way an operator does: boots a minimal
# Debian 12 container (debootstrap + systemd-nspawn -b, entered with nsenter; no systemd
# needed on the host), installs the package and runs the pair through start, a message,
# kill -9 of the primary, a broken reload, the journal's priorities, the watchdog, a clean
# stop and purge. Each step has a deadline and fails naming itself.
#
#   packaging/test-in-container.sh DEB
#
# Needs root, debootstrap and systemd-nspawn (apt: debootstrap systemd-container) and, the
# first time, Debian's mirror. The root file system is kept in $CARGO_TARGET_DIR/nspawn
# (default target/nspawn) and reused: the container boots it with --volatile=overlay, so
# nothing a run does is written to it. Where the machine cannot boot a container the test
# is skipped, saying why; with CI=true it fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8

# What the root file system holds besides minbase: systemd as PID 1, dbus for systemctl,
# adduser for the package's postinst. Changing this list rebuilds the root file system.
readonly ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,adduser
readonly MACHINE=pbchat-ci
# Booting minbase systemd takes about 1 s here; a loaded CI machine gets ample room.
readonly BOOT_DEADLINE_S=120
# A node start, a fail-over (1 s of missed heartbeats) and a systemd restart (RestartSec=1s).
readonly STEP_DEADLINE_S=30
# One command inside (systemctl start waits for READY=1; dpkg -i runs postinst).
readonly COMMAND_DEADLINE_S=60
# WatchdogSec=10s in pbchat@.service, then the abort, the restart and the node's start.
readonly WATCHDOG_DEADLINE_S=60
# Container shutdown (SIGTERM to nspawn powers the container off) before it is killed.
readonly SHUTDOWN_DEADLINE_S=30

deb=${1:?usage: packaging/test-in-container.sh DEB}
work_dir=${CARGO_TARGET_DIR:-target}/nspawn
rootfs=$work_dir/rootfs
nspawn_pid=
leader=
step=setup

fail() { echo "container test: step '$step': $*" >&2; exit 1; }
skip() {
  if [ "${CI:-}" = true ]; then fail "cannot run in CI: $*"; fi
  echo "container test: skipped: $* (CI=true makes this a failure)"
  exit 0
}
# Starts step NAME, saying how long the one before took.
begin() {
  [ -z "${step_started:-}" ] || echo "   ($((SECONDS - step_started))s)"
  step=$1
  step_started=$SECONDS
  echo "-- $step"
}

# Runs a command inside the container, as root, with a clean environment, for at most
# COMMAND_DEADLINE_S (exit status 124 past it).
inside() {
  timeout "$COMMAND_DEADLINE_S" nsenter -t "$leader" -a -r -w -- \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# Waits until `inside CMD...` succeeds, up to DEADLINE seconds; fails naming WHAT.
wait_for() {
  local deadline_s=$1 what=$2
  shift 2
  local end=$((SECONDS + deadline_s))
  until inside "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || fail "$what: not within ${deadline_s}s"
    sleep 0.2
  done
}

# Prints the first of PID's children that is PID 1 of its own pid namespace.
container_init() {
  local child
  for child in $(pgrep -P "$1" || true); do
    if grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$child/status" 2>/dev/null; then
      echo "$child"
      return
    fi
  done
}

check_host() {
  [ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
  [ -f "$deb" ] || fail "no package at $deb"
  local tool
  for tool in debootstrap systemd-nspawn nsenter pgrep; do
    command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install debootstrap systemd-container)"
  done
}

# Builds the root file system once; reused while ROOTFS_PACKAGES is unchanged.
make_rootfs() {
  begin "debootstrap bookworm into $rootfs"
  if [ "$(cat "$rootfs.packages" 2>/dev/null)" = "$ROOTFS_PACKAGES" ] && [ -x "$rootfs/lib/systemd/systemd" ]; then
    echo "reusing $rootfs"
    return
  fi
  rm -rf "$rootfs" "$rootfs.tmp" "$rootfs.packages"
  mkdir -p "$work_dir"
  debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$rootfs.tmp" \
    http://deb.debian.org/debian >"$work_dir/debootstrap.log" 2>&1 ||
    skip "debootstrap failed (no network to Debian's mirror?): see $work_dir/debootstrap.log"
  # The machine id is made at each (volatile) boot.
  rm -f "$rootfs.tmp/etc/machine-id"
  mv "$rootfs.tmp" "$rootfs"
  echo "$ROOTFS_PACKAGES" >"$rootfs.packages"
}

# Units masked in the root file system (each run: these are the script's, not debootstrap's).
# No getty on a console nobody reads. The container has only loopback: waiting for a
# configured network (network-online.target, which pbchat@.service wants) would take
# systemd-networkd-wait-online's 2-minute timeout.
mask_units() {
  local unit
  for unit in console-getty.service systemd-networkd-wait-online.service; do
    ln -sfn /dev/null "$rootfs/etc/systemd/system/$unit"
  done
}

stop_container() {
  [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null || return 0
  kill -TERM "$nspawn_pid" 2>/dev/null || true
  local end=$((SECONDS + SHUTDOWN_DEADLINE_S))
  while kill -0 "$nspawn_pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    echo "container test: $MACHINE did not power off in ${SHUTDOWN_DEADLINE_S}s; killing it" >&2
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  wait "$nspawn_pid" 2>/dev/null || true
  nspawn_pid=
  remove_cgroups
}

# With --keep-unit (no systemd on the host to ask for a scope), nspawn makes payload/ and
# supervisor/ in this script's own cgroup and leaves them, empty, when the container stops.
remove_cgroups() {
  local line hierarchy path mount sub
  while IFS= read -r line; do
    hierarchy=${line#*:}
    hierarchy=${hierarchy%%:*}
    path=${line#*:*:}
    case "$hierarchy" in
      name=systemd) mount=/sys/fs/cgroup/systemd ;;
      "") mount=/sys/fs/cgroup/unified; [ -d "$mount" ] || mount=/sys/fs/cgroup ;;
      *) continue ;;
    esac
    for sub in payload supervisor; do
      [ -d "$mount${path%/}/$sub" ] || continue
      find "$mount${path%/}/$sub" -depth -type d -exec rmdir {} + 2>/dev/null ||
        echo "container test: note: could not remove the cgroup $mount${path%/}/$sub" >&2
    done
  done </proc/self/cgroup
}

on_exit() {
  local rc=$?
  # fail() has said why; a command that failed under set -e has only said its own error.
  [ "$rc" = 0 ] || echo "container test: failed in step '$step' (exit status $rc)" >&2
  if [ "$rc" != 0 ] && [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
    echo "== journal of the pbchat units (for the failure above)" >&2
    inside journalctl --no-pager -n 80 -u 'pbchat@*' >&2 || true
  fi
  stop_container
  exit "$rc"
}

boot() {
  begin "boot $MACHINE (systemd-nspawn -b)"
  # --volatile=overlay: the root file system stays as debootstrap left it. Private network:
  # only the container's own loopback, so its ports meet nothing on the host.
  # --register=no --keep-unit: nspawn asks no host systemd (there may be none) for anything.
  systemd-nspawn -b -D "$rootfs" --machine="$MACHINE" --volatile=overlay --register=no --keep-unit \
    --private-network --console=read-only --bind-ro="$(realpath "$deb")":/root/pbchat.deb \
    </dev/null >"$work_dir/boot.log" 2>&1 &
  nspawn_pid=$!
  local end=$((SECONDS + BOOT_DEADLINE_S))
  while [ -z "$leader" ]; do
    kill -0 "$nspawn_pid" 2>/dev/null ||
      skip "systemd-nspawn exited at once: $(tail -n 5 "$work_dir/boot.log" | tr '\n' ' ')"
    [ "$SECONDS" -lt "$end" ] || fail "no container init within ${BOOT_DEADLINE_S}s"
    leader=$(container_init "$nspawn_pid")
    [ -n "$leader" ] || sleep 0.2
  done
  local state=
  until [[ "$state" == running || "$state" == degraded ]]; do
    [ "$SECONDS" -lt "$end" ] || fail "systemctl is-system-running: '$state' after ${BOOT_DEADLINE_S}s"
    sleep 0.5
    state=$(inside systemctl is-system-running 2>/dev/null || true)
  done
  echo "booted: $(inside systemctl --version | head -n 1), system $state, init pid $leader"
}

# The role pbchatctl reports for instance NAME ("primary", "backup", ...).
role_of() { inside pbchatctl "$1" role 2>/dev/null || true; }
main_pid() { inside systemctl show -P MainPID "pbchat@$1"; }
# True when instance NAME runs, under a MainPID other than OLD, and reports ROLE.
restarted_as() {
  local name=$1 old=$2 role=$3 pid
  pid=$(main_pid "$name")
  [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ "$(role_of "$name")" = "$role" ]
}
# Waits until restarted_as NAME OLD ROLE holds.
wait_restarted() {
  local deadline_s=$1 name=$2 old=$3 role=$4
  local end=$((SECONDS + deadline_s))
  until restarted_as "$name" "$old" "$role"; do
    [ "$SECONDS" -lt "$end" ] ||
      fail "pbchat@$name (was pid $old) is not back as $role within ${deadline_s}s: $(role_of "$name")"
    sleep 0.2
  done
}
wait_role() {
  wait_for "$STEP_DEADLINE_S" "pbchat@$1 reporting role $2" sh -c "[ \"\$(pbchatctl $1 role)\" = $2 ]"
}
# Waits until the journal of pbchat@NAME, at PRIORITY or above, has a line matching
# PATTERN (grep -E): journald writes asynchronously, after systemctl has answered.
journal_shows() {
  local name=$1 priority=$2 pattern=$3
  wait_for "$STEP_DEADLINE_S" "a line /$pattern/ at -p $priority in the journal of pbchat@$name" \
    sh -c 'journalctl --no-pager -o short -p "$2" -u "$1" | grep -Eq -- "$3"' sh "pbchat@$name" \
    "$priority" "$pattern"
}
history_has() {
  inside pbchat-client --room ci --history 50 --timeout-ms 10000 | grep -qF "$1" ||
    fail "the room's history lacks '$1'"
}

install_and_start() {
  begin "dpkg -i"
  inside dpkg -i /root/pbchat.deb >"$work_dir/dpkg.log" 2>&1 || fail "dpkg -i: $(tail -n 5 "$work_dir/dpkg.log")"
  begin "systemctl start pbchat@primary pbchat@backup"
  inside systemctl start pbchat@primary pbchat@backup ||
    fail "systemctl start failed or took over ${COMMAND_DEADLINE_S}s"
  wait_role primary primary
  wait_role backup backup
  # The node starts as backup and promotes itself once it hears its peer is one.
  wait_for "$STEP_DEADLINE_S" "pbchat@primary's notify status 'primary epoch ...'" \
    sh -c 'systemctl show -P StatusText pbchat@primary | grep -q "^primary epoch"'
  echo "pbchat@primary status: $(inside systemctl show -P StatusText pbchat@primary)"
}

send_message() {
  begin "a chat message (pbchat-client --send)"
  inside pbchat-client --room ci --send "$1" --timeout-ms 10000 >/dev/null || fail "pbchat-client --send failed"
  history_has "$1"
}

kill_primary() {
  begin "systemctl kill -s KILL pbchat@primary: fail-over, restart as backup"
  local old
  old=$(main_pid primary)
  inside systemctl kill -s KILL pbchat@primary
  wait_role backup primary
  wait_restarted "$STEP_DEADLINE_S" primary "$old" backup
  history_has "$1"
}

# On the node now serving as backup (instance primary): a bad value must fail the reload,
# naming the key, and leave the node running; the good file reloads again.
broken_reload() {
  begin "systemctl reload with a broken file fails, naming the key"
  local file=/etc/pbchat/primary.toml
  inside cp "$file" "$file.good"
  inside sed -i 's/^max_clients = .*/max_clients = "lots"/' "$file"
  if inside systemctl reload pbchat@primary 2>/dev/null; then
    fail "systemctl reload succeeded on max_clients = \"lots\""
  fi
  journal_shows primary debug 'max_clients'
  inside mv "$file.good" "$file"
  inside systemctl reload pbchat@primary || fail "systemctl reload of the restored file failed"
  [ "$(role_of primary)" = backup ] || fail "pbchat@primary is not serving as backup after the reloads"
}

# Priorities reach the journal: pbchatd's warnings (the lost primary) and pbchatctl's
# refusal are there at -p warning, and the "serving as" line (info) is not.
journal_priorities() {
  begin "journalctl -p warning shows the warnings, and only them"
  journal_shows backup warning 'pbchatd\[[0-9]+\]: \[b\]'
  journal_shows primary warning 'pbchatctl\[[0-9]+\]: .*max_clients'
  journal_shows primary info 'serving as'
  if inside journalctl --no-pager -p warning -u 'pbchat@*' | grep -q 'serving as'; then
    fail "an info line ('serving as') is at priority warning or above"
  fi
}

# A frozen node (SIGSTOP) stops feeding the watchdog: systemd aborts and restarts it.
watchdog() {
  begin "watchdog: a frozen pbchatd is restarted by systemd"
  local old
  old=$(main_pid primary)
  inside sh -c "kill -STOP $old"
  wait_restarted "$WATCHDOG_DEADLINE_S" primary "$old" backup
  journal_shows primary debug "Failed with result 'watchdog'"
}

# systemctl stop of the primary (instance backup) hands over to the caught-up backup.
clean_stop() {
  begin "systemctl stop hands over cleanly"
  # A hand-over needs a caught-up backup: the primary's status says "degraded" until then.
  wait_for "$STEP_DEADLINE_S" "pbchat@backup serving as primary, not degraded" \
    sh -c 'systemctl show -P StatusText pbchat@backup | grep -v degraded | grep -q "^primary epoch"'
  inside systemctl stop pbchat@backup || fail "systemctl stop pbchat@backup failed"
  local result
  result=$(inside systemctl show -P Result pbchat@backup)
  [ "$result" = success ] || fail "pbchat@backup stopped with result '$result'"
  journal_shows backup debug 'hand-over: the peer took over'
  journal_shows primary debug 'promoted to primary .*planned hand-over'
  journal_shows backup debug 'stopped cleanly'

  wait_role primary primary
  history_has "$1"
  inside systemctl stop pbchat@primary || fail "systemctl stop pbchat@primary failed"
}

purge() {
  begin "dpkg --purge leaves nothing"
  inside dpkg --purge pbchat >>"$work_dir/dpkg.log" 2>&1 || fail "dpkg --purge: $(tail -n 5 "$work_dir/dpkg.log")"
  local path
  for path in /etc/pbchat /var/lib/pbchat /run/pbchat /usr/bin/pbchatd /usr/share/doc/pbchat \
    /lib/systemd/system/pbchat@.service; do
    if inside test -e "$path"; then fail "$path is left after purge"; fi
  done
  if inside getent passwd pbchat >/dev/null; then fail "the pbchat user is left after purge"; fi
  if inside systemctl list-units --all --plain --no-legend 'pbchat*' | grep -q .; then
    fail "systemd still lists pbchat units after purge"
  fi
}

main() {
  local started=$SECONDS message="hello from $MACHINE $$"
  check_host
  make_rootfs
  mask_units
  trap on_exit EXIT
  boot
  install_and_start
  send_message "$message"
  kill_primary "$message"
  broken_reload
  journal_priorities
  watchdog
  clean_stop "$message"
  purge
  begin shutdown
  stop_container
  echo "container test: ok in $((SECONDS - started))s"
}

main
