#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests against the real binaries.
#
# Some integration tests drive programs beside pbchatd: tmux (the interactive client's
# screen, tests/it/client_terminal.rs), python3 (the reference client, tests/it/python_client.rs),
# promtool from Debian's prometheus package (/metrics lint, tests/it/operations.rs), mkfs.ext4
# and fsfreeze (a primary whose disk stops answering, tests/it/failover.rs), nft and ip (the
# namespace fault lab), arping (the lab's VIP moved by the role-change hook), chromium and
# chromedriver (the page in a real browser, tests/it/browser.rs). As root on Debian the
# missing ones are installed first; otherwise they are named here, and the tests that need
# them fail saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v tmux >/dev/null || missing+=(tmux)
command -v python3 >/dev/null || missing+=(python3)
command -v promtool >/dev/null || missing+=(prometheus)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v fsfreeze >/dev/null || missing+=(util-linux)
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
command -v arping >/dev/null || missing+=(iputils-arping)
command -v chromedriver >/dev/null || missing+=(chromium chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing what the tests drive: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "test.sh: the tests need: ${missing[*]} (apt-get install ${missing[*]})" >&2
  fi
fi
cargo test --all-targets "$@"
