#!/usr/bin/env bash
# Builds the Debian package target/debian/pbchat_<version>_<arch>.deb with cargo-deb, from
# [package.metadata.deb] in Cargo.toml. Run from anywhere on Debian with cargo, cargo-deb
# (`cargo install cargo-deb --locked`) and dpkg-dev.
#
#   packaging/build-deb.sh              build the release binaries, then package
#   packaging/build-deb.sh --no-build   package the binaries already built
#
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: target); the .deb goes to its debian/
#   DEB_REVISION      Debian revision appended to Cargo.toml's version (default: 1)
#   SOURCE_DATE_EPOCH timestamp for the changelog and the archive (default: last commit)
#
# What cargo-deb cannot do, done here first, into $CARGO_TARGET_DIR/release/packaging/ (the
# assets' target/release/ prefix follows CARGO_TARGET_DIR): the configurations, which are
# config/*.toml with paths for an installed system, the changelog, which names the commit,
# and the shell completions, which the built binaries print.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
export LC_ALL=C.UTF-8

build=yes
for arg in "$@"; do
  case "$arg" in
    --no-build) build=no ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build-deb.sh: $*" >&2; exit 1; }
command -v cargo-deb >/dev/null || die "cargo-deb is missing (cargo install cargo-deb --locked)"
for tool in dpkg-shlibdeps dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev)"
done

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
revision=${DEB_REVISION:-1}
release_dir=${CARGO_TARGET_DIR:-target}/release
staging=$release_dir/packaging
mkdir -p "$staging"

# KEY = VALUE lines of FILE that must be there after the rewrite, else the build stops.
expect() {
  local file=$1 line
  shift
  for line in "$@"; do
    grep -qxF "$line" "$file" || die "$file: no line '$line' (did config/ change?)"
  done
  if grep -n 'data/' "$file" | grep -v '^[0-9]*:#' >/dev/null; then
    die "$file: a path under data/ is left: $(grep -n 'data/' "$file" | grep -v '^[0-9]*:#')"
  fi
}

# config/NAME.toml with data_dir under StateDirectory=pbchat, the secret made by postinst
# and the admin socket under RuntimeDirectory=pbchat of pbchat@.service.
node_config() {
  local name=$1 out=$staging/$1.toml
  {
    echo "# Installed by the pbchat package as /etc/pbchat/$name.toml (a conffile: your"
    echo "# changes are kept on upgrade). Started by: systemctl start pbchat@$name"
    echo "# For a pair on two hosts, set the listen addresses to this host's IP and the [peer]"
    echo "# addresses to the other host's: see /usr/share/doc/pbchat/operations.md."
    echo "#"
    sed -e "s|^data_dir = .*|data_dir = \"/var/lib/pbchat/$name\"|" \
      -e 's|^secret_file = .*|secret_file = "/etc/pbchat/pair.secret"|' \
      -e "s|^socket = .*|# Packaged: in /run/pbchat, the RuntimeDirectory= of pbchat@.service.\nsocket = \"/run/pbchat/$name.sock\"|" \
      -e "s|config/$name\.toml|/etc/pbchat/$name.toml|g" \
      -e 's|(scripts/pair\.sh does it for this example)|(the package did on installation)|' \
      "config/$name.toml"
  } >"$out"
  expect "$out" "data_dir = \"/var/lib/pbchat/$name\"" 'secret_file = "/etc/pbchat/pair.secret"' \
    "socket = \"/run/pbchat/$name.sock\""
}

# config/witness.toml with the pair's secret in /etc/pbchat and its state file under
# StateDirectory=pbchat of pbchat-witness.service.
witness_config() {
  local out=$staging/witness.toml
  {
    echo "# Installed by the pbchat package as /etc/pbchat/witness.toml (a conffile: your"
    echo "# changes are kept on upgrade). Started by: systemctl start pbchat-witness"
    echo "# Set listen to this host's IP, copy the pair's secret to /etc/pbchat/pair.secret,"
    echo "# and see pbchat-witness(8) and /usr/share/doc/pbchat/operations.md."
    echo "#"
    sed -e 's|^secret_file = .*|secret_file = "/etc/pbchat/pair.secret"|' \
      -e 's|^state_file = .*|state_file = "/var/lib/pbchat/witness.state"|' \
      -e 's|-c config/witness\.toml|-c /etc/pbchat/witness.toml|g' config/witness.toml
  } >"$out"
  expect "$out" 'secret_file = "/etc/pbchat/pair.secret"' 'state_file = "/var/lib/pbchat/witness.state"'
}

# changelog.Debian.gz (non-native: the version has a Debian revision).
changelog() {
  local version maintainer
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
  [ -n "$version" ] || die "no version in Cargo.toml"
  maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
  {
    echo "pbchat ($version-$revision) unstable; urgency=medium"
    echo
    echo "  * Built from pbchat $version, git commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo
    echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n >"$staging/changelog.Debian.gz"
}

# Shell completions for bash, zsh and fish, printed by each (release) binary itself from
# its clap definition (src/completions.rs), named where each shell looks them up.
completions() {
  local bin dir=$staging/completions
  mkdir -p "$dir/bash" "$dir/zsh" "$dir/fish"
  for bin in pbchatd pbchatctl pbchat-client pbchat-witness; do
    [ -x "$release_dir/$bin" ] || die "$release_dir/$bin is missing: build first (or drop --no-build)"
    "$release_dir/$bin" --completions bash >"$dir/bash/$bin"
    "$release_dir/$bin" --completions zsh >"$dir/zsh/_$bin"
    "$release_dir/$bin" --completions fish >"$dir/fish/$bin.fish"
  done
}

# packaging/debian/copyright carries LICENSE's text (after its title and copyright lines)
# in DEP-5 form, the only indented lines: they must agree.
check_copyright() {
  diff <(tail -n +5 LICENSE | sed -e 's/^$/./' -e 's/^/ /') <(grep '^ ' packaging/debian/copyright) \
    >/dev/null || die "packaging/debian/copyright's license text differs from LICENSE"
}

node_config primary
node_config backup
witness_config
changelog
check_copyright
# cargo-deb (3.8) writes no DEBIAN/md5sums, which `dpkg --verify pbchat` and debsums read
# to check the installed files: the package is unpacked, given one, and packed again.
add_md5sums() {
  local deb=$1 root=$scratch/root
  dpkg-deb -R "$deb" "$root"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
  chmod 0644 "$root/DEBIAN/md5sums"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
}

if [ "$build" = yes ]; then
  echo "== cargo build --release --bins"
  cargo build --release --bins
fi
completions
echo "== cargo deb --strip --no-build"
deb=$(cargo deb --strip --no-build --deb-revision "$revision" | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not name the package it built (got '$deb')"
add_md5sums "$deb"
echo "built $deb"
dpkg-deb --field "$deb" Package Version Architecture Depends Installed-Size
