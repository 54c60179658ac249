#!/bin/sh
# Installs everything the tests and the demo need, idempotently:
#   - Debian packages (BIRD 2 for the router lab, etcd for the fleet tests, tmux for the
#     terminal test of `status --watch`, nftables' Python binding for drain forwarding
#     (linked into .venv below) and its `nft` command, which the forwarding lab test and
#     the fault suite use to look at and cut the kernel's tables, matplotlib for the
#     benchmark's plots: the bench only, not the package, so it stays out of .venv)
#     when run as root and missing;
#   - .venv: announcer itself (editable) with its dev tools and ExaBGP 5.0.x from PyPI;
#   - .venv-exabgp42: ExaBGP 4.2.25 (Debian 13's version) in a venv of its own.
# Safe to run again: it only does what is missing.
set -eu
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXABGP5=${EXABGP5_VERSION:-5.0.15}
EXABGP42=${EXABGP42_VERSION:-4.2.25}

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: not root, cannot install:$missing (lab tests will skip)" >&2
        return 0
    fi
    echo "bootstrap: apt-get install$missing" >&2
    if [ ! -f .cache/apt-updated ] || [ -n "$(find .cache/apt-updated -mmin +720 2>/dev/null)" ]; then
        apt-get update -qq
        mkdir -p .cache && touch .cache/apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

apt_install bird2 iproute2 procps libfaketime etcd-server tmux nftables python3-nftables python3-matplotlib

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import announcer, pytest, mypy, exabgp" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.stamp ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -e ".[dev]" "exabgp==$EXABGP5"
    touch .venv/.stamp
fi

# Drain forwarding (announcer/forwarding) uses libnftables' Python binding, which is not
# on PyPI: Debian's python3-nftables (pure Python over libnftables.so.1, via ctypes). The
# venv sees that one package, not the rest of Debian's dist-packages, through a .pth
# naming a folder that holds only a link to it.
if [ -d /usr/lib/python3/dist-packages/nftables ] && ! .venv/bin/python -c "import nftables" 2>/dev/null; then
    mkdir -p .venv/debian-nftables
    ln -sfn /usr/lib/python3/dist-packages/nftables .venv/debian-nftables/nftables
    site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$(pwd)/.venv/debian-nftables" > "$site/debian-nftables.pth"
fi

if [ ! -x .venv-exabgp42/bin/exabgp ]; then
    "$PY" -m venv .venv-exabgp42
    .venv-exabgp42/bin/pip install -q "exabgp==$EXABGP42"
fi
echo "bootstrap: ready (.venv with ExaBGP $(.venv/bin/exabgp version 2>&1 | sed -n "s/^ExaBGP : //p"); .venv-exabgp42 with ExaBGP $EXABGP42)" >&2
