#!/usr/bin/env bash
# Builds the Debian package target/debian/pbchat_<version>_<arch>.deb with dpkg-deb alone
# (no cargo-deb, no debhelper). Run from anywhere on Debian with cargo and dpkg-dev.
#
#   packaging/build-deb.sh              cargo build --release --bins, then package
#   packaging/build-deb.sh --no-build   package the binaries already built
#
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: target); the .deb goes to its debian/
#   DEB_REVISION      Debian revision appended to Cargo.toml's version (default: 1)
#   DEB_MAINTAINER    "Name <email>" for the Maintainer field
#   SOURCE_DATE_EPOCH timestamp for the changelog and the archive (default: last commit)
#
# Templates live in packaging/debian/: control.in, copyright.in and the maintainer scripts.
# The configurations come from config/*.toml with paths rewritten for an installed system.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
export LC_ALL=C.UTF-8

build=yes
for arg in "$@"; do
  case "$arg" in
    --no-build) build=no ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build-deb.sh: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps gzip strip; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev binutils)"
done

# The [package] version of Cargo.toml.
upstream_version=$(awk '
  /^\[/ { in_package = ($0 == "[package]") }
  in_package && /^version[ \t]*=/ { gsub(/^[^"]*"|".*$/, ""); print; exit }
' Cargo.toml)
[ -n "$upstream_version" ] || die "no version in Cargo.toml's [package]"
revision=${DEB_REVISION-1}
version=$upstream_version${revision:+-$revision}
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-pbchat maintainers <maintainers@users.noreply.b-seed-ddb53c33.example>}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

target_dir=${CARGO_TARGET_DIR:-target}
release_dir=$target_dir/release
out_dir=$target_dir/debian
root=$out_dir/pbchat_${version}_${arch}
deb=$out_dir/pbchat_${version}_${arch}.deb
templates=packaging/debian

if [ "$build" = yes ]; then
  echo "== cargo build --release --bins"
  cargo build --release --bins
fi

# pbchatctl is required: pbchat@.service's ExecReload= runs it.
binaries=(pbchatd pbchat-client pbchatctl pbchat-witness)
for bin in "${binaries[@]}"; do
  [ -x "$release_dir/$bin" ] || die "$release_dir/$bin is missing: build first (or drop --no-build)"
done

echo "== staging $root"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rm -rf "$root" "$deb"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/etc/pbchat" \
  "$root/lib/systemd/system" "$root/usr/share/doc/pbchat" \
  "$root/usr/share/man/man1" "$root/usr/share/man/man5" "$root/usr/share/man/man8"

# Binaries, stripped (the release profile keeps line tables for backtraces; the package
# does not ship them).
for bin in "${binaries[@]}"; do
  install -m 0755 "$release_dir/$bin" "$root/usr/bin/$bin"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$bin"
done

# Configurations: the shipped pair, with paths for an installed system. data_dir under
# StateDirectory=pbchat, the secret made by postinst, the admin socket under
# RuntimeDirectory=pbchat (only where the config has an [admin] section: the key is
# unknown to a pbchatd without the admin socket, and unknown keys are errors).
for instance in primary backup; do
  src=config/$instance.toml
  dst=$root/etc/pbchat/$instance.toml
  {
    echo "# Installed by the pbchat package as /etc/pbchat/$instance.toml (a conffile: your"
    echo "# changes are kept on upgrade). Started by: systemctl start pbchat@$instance"
    echo "# For a pair on two hosts, set the listen addresses to this host's IP and the [peer]"
    echo "# addresses to the other host's: see /usr/share/doc/pbchat/operations.md."
    echo "#"
    # Does [admin] set socket already? Then that line is replaced in place, else one is
    # added under the section header.
    has_socket=$(awk '/^\[/ { section = $0 } section == "[admin]" && /^socket[ \t]*=/ { found = 1 }
                      END { print found ? 1 : 0 }' "$src")
    awk -v instance="$instance" -v has_socket="$has_socket" '
      function admin_socket() {
        print "# Packaged: in /run/pbchat, the RuntimeDirectory= of pbchat@.service."
        print "socket = \"/run/pbchat/" instance ".sock\""
      }
      /^\[/ {
        section = $0
        print
        if (section == "[admin]" && !has_socket) admin_socket()
        next
      }
      section == "[node]" && /^data_dir[ \t]*=/ {
        print "data_dir = \"/var/lib/pbchat/" instance "\""; next
      }
      section == "[heartbeat]" && /^secret_file[ \t]*=/ {
        print "secret_file = \"/etc/pbchat/pair.secret\""; next
      }
      section == "[admin]" && /^socket[ \t]*=/ { admin_socket(); next }
      {
        gsub(/config\/(primary|backup)\.toml/, "/etc/pbchat/" instance ".toml")
        gsub(/\(scripts\/pair\.sh does it for this example\)/, "(the package did on installation)")
        print
      }
    ' "$src"
  } >"$dst"
  chmod 0644 "$dst"
  grep -q "^data_dir = \"/var/lib/pbchat/$instance\"$" "$dst" || die "$src: no data_dir to rewrite"
  if grep -q '^secret_file' "$src"; then
    grep -q '^secret_file = "/etc/pbchat/pair.secret"$' "$dst" || die "$src: secret_file not rewritten"
  fi
  if ! grep -q '^\[admin\]' "$dst"; then
    # No [admin] section in config/: add one if this pbchatd knows admin.socket (checked
    # on a copy whose secret is a scratch one, as --check reads the secret).
    admin_section=$'\n[admin]\n# Admin socket for pbchatctl, in RuntimeDirectory=pbchat of pbchat@.service.\n'
    admin_section+="socket = \"/run/pbchat/$instance.sock\""
    [ -e "$scratch/pair.secret" ] || "$release_dir/pbchatd" --gen-secret "$scratch/pair.secret" >/dev/null
    sed "s#^secret_file = .*#secret_file = \"$scratch/pair.secret\"#" "$dst" >"$scratch/probe.toml"
    printf '%s\n' "$admin_section" >>"$scratch/probe.toml"
    if "$release_dir/pbchatd" --check -c "$scratch/probe.toml" >/dev/null 2>&1; then
      printf '%s\n' "$admin_section" >>"$dst"
    fi
  fi
  if grep -q '^\[admin\]' "$dst"; then
    echo "   $instance.toml: admin socket /run/pbchat/$instance.sock"
  else
    echo "note: this pbchatd has no admin.socket: $instance.toml keeps the default"
  fi
  if grep -n 'data/' "$dst" | grep -v '^[0-9]*:#' >/dev/null; then
    die "$dst: a path under data/ is left: $(grep -n 'data/' "$dst" | grep -v '^[0-9]*:#')"
  fi
done
# The witness (strict mode), from config/witness.toml: the pair's secret in /etc/pbchat,
# its state file under StateDirectory=pbchat of pbchat-witness.service.
src=config/witness.toml
dst=$root/etc/pbchat/witness.toml
{
  echo "# Installed by the pbchat package as /etc/pbchat/witness.toml (a conffile: your"
  echo "# changes are kept on upgrade). Started by: systemctl start pbchat-witness"
  echo "# Set listen to this host's IP, copy the pair's secret to /etc/pbchat/pair.secret,"
  echo "# and see pbchat-witness(8) and /usr/share/doc/pbchat/operations.md."
  echo "#"
  awk '
    /^secret_file[ \t]*=/ { print "secret_file = \"/etc/pbchat/pair.secret\""; next }
    /^state_file[ \t]*=/ { print "state_file = \"/var/lib/pbchat/witness.state\""; next }
    { gsub(/-c config\/witness\.toml/, "-c /etc/pbchat/witness.toml"); print }
  ' "$src"
} >"$dst"
chmod 0644 "$dst"
grep -q '^secret_file = "/etc/pbchat/pair.secret"$' "$dst" || die "$src: secret_file not rewritten"
grep -q '^state_file = "/var/lib/pbchat/witness.state"$' "$dst" || die "$src: state_file not rewritten"
if grep -n 'data/' "$dst" | grep -v '^[0-9]*:#' >/dev/null; then
  die "$dst: a path under data/ is left"
fi
printf '/etc/pbchat/primary.toml\n/etc/pbchat/backup.toml\n/etc/pbchat/witness.toml\n' \
  >"$root/DEBIAN/conffiles"

# The systemd unit template, and /run/pbchat from boot on.
install -m 0644 systemd/pbchat@.service "$root/lib/systemd/system/pbchat@.service"
install -m 0644 systemd/pbchat-witness.service "$root/lib/systemd/system/pbchat-witness.service"
install -d -m 0755 "$root/usr/lib/tmpfiles.d"
install -m 0644 "$templates/pbchat.tmpfiles" "$root/usr/lib/tmpfiles.d/pbchat.conf"

# Man pages, one per binary shipped plus the configuration format.
pages=(man/pbchatd.8 man/pbchat-client.1 man/pbchat.toml.5 man/pbchat-witness.8 man/pbchatctl.8)
for page in "${pages[@]}"; do
  [ -f "$page" ] || die "$page is missing"
  section=${page##*.}
  gzip -9n <"$page" >"$root/usr/share/man/man$section/$(basename "$page").gz"
  chmod 0644 "$root/usr/share/man/man$section/$(basename "$page").gz"
done

# Documentation. docs/protocol.md is the client contract, the one page a client author in
# another language needs: it must be in the package (as /usr/share/doc/pbchat/protocol.md,
# uncompressed like the other pages, so that their links to each other work).
[ -f docs/protocol.md ] || die "docs/protocol.md is missing"
install -m 0644 README.md docs/*.md "$root/usr/share/doc/pbchat/"
copyright_line=$(sed -n 's/^Copyright (c) //p' LICENSE | head -1)
license_text=$(awk '
  NR == 1 && /License$/ { next }             # the title line
  /^Copyright / && !seen { seen = 1; next }  # in the Copyright: field instead
  { print }
' LICENSE | sed -e '/./,$!d' | sed -e 's/^$/./' -e 's/^/ /')
awk -v maintainer="$maintainer" -v copyright="$copyright_line" -v license="$license_text" '
  { gsub(/@MAINTAINER@/, maintainer); gsub(/@COPYRIGHT@/, copyright) }
  /^@LICENSE_TEXT@$/ { print license; next }
  { print }
' "$templates/copyright.in" >"$root/usr/share/doc/pbchat/copyright"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# A version with a Debian revision is a non-native package (changelog.Debian.gz); without
# one (DEB_REVISION=) a native one, whose changelog Debian names changelog.gz.
changelog_name=changelog.Debian.gz
[ -n "$revision" ] || changelog_name=changelog.gz
{
  echo "pbchat ($version) unstable; urgency=medium"
  echo
  echo "  * Built from pbchat $upstream_version, git commit $commit."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$root/usr/share/doc/pbchat/$changelog_name"
chmod 0644 "$root/usr/share/doc/pbchat/"*
# The Python reference client that docs/protocol.md says to read next to it, where Debian
# puts examples (after the chmod above, which is for files only).
if [ -f examples/python/pbchat_client.py ]; then
  install -D -m 0644 examples/python/pbchat_client.py \
    "$root/usr/share/doc/pbchat/examples/pbchat_client.py"
else
  echo "note: examples/python/pbchat_client.py does not exist: packaging without it"
fi

# Lintian overrides, each with its reason in the file.
install -d -m 0755 "$root/usr/share/lintian/overrides"
install -m 0644 "$templates/lintian-overrides" "$root/usr/share/lintian/overrides/pbchat"

# Maintainer scripts.
for script in postinst prerm postrm; do
  install -m 0755 "$templates/$script" "$root/DEBIAN/$script"
done

# Depends: the shared libraries the binaries link (dpkg-shlibdeps wants a debian/control
# to read, so it runs in a scratch directory), plus adduser for postinst.
mkdir "$scratch/debian"
printf 'Source: pbchat\n\nPackage: pbchat\nArchitecture: any\n' >"$scratch/debian/control"
shlib_args=()
for bin in "${binaries[@]}"; do
  shlib_args+=("-e$(realpath "$root/usr/bin/$bin")")
done
if shlibs=$(cd "$scratch" && dpkg-shlibdeps -O "${shlib_args[@]}" 2>"$scratch/err"); then
  shlib_depends=${shlibs#shlibs:Depends=}
else
  cat "$scratch/err" >&2
  echo "note: dpkg-shlibdeps failed; using a libc6 minimum" >&2
  shlib_depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
fi
depends="adduser, $shlib_depends"

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
ctl_line="/@CTL_LINE@/d"
if [[ " ${binaries[*]} " == *" pbchatctl "* ]]; then
  ctl_line="s|@CTL_LINE@|  - pbchatctl, status, fail-over drills and reloads over the admin socket;|"
fi
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" \
  -e "s/@MAINTAINER@/$maintainer/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
  -e "s/@DEPENDS@/$depends/" -e "$ctl_line" \
  "$templates/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

echo "== dpkg-deb --build"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb"
dpkg-deb --field "$deb" Package Version Architecture Depends Installed-Size
