#!/bin/bash
# shellcheck disable=SC2016 # ${...} in single quotes are dpkg-query formats
# Package test: build the .deb, lint it, install it into a Debian 13 chroot and
# run it there. Needs root (chroot, mounts, network namespace) and Debian's
# archive.
#
#   sudo tests/package/run.sh            # everything
#   KEEP=1 sudo tests/package/run.sh     # keep the chroot of this run for a look
#
# Steps:
#   1. host tools (debhelper, dh-python, mmdebstrap, ...) from Debian's archive
#   2. dpkg-buildpackage -us -uc -b on a copy of the tree (.cache/package-test/build)
#   3. Debian 13 base and lintian chroots, made by mmdebstrap once a day and
#      cached as tarballs in .cache/package-test/ (later runs reuse them)
#   4. lintian --fail-on error,warning, with Debian 13's lintian
#   5. apt-get install ./announcer_*.deb into a fresh copy of the base chroot
#      (it must pull in Debian's exabgp 4.2.x and python3-pydantic 2.x), then:
#      the user, the conffiles, the unit (systemd-analyze verify and security),
#      announcer --version and check-config, the man page, the dependencies
#   6. smoke run in a private network namespace: the installed ExaBGP runs the
#      installed controller as user "announcer" (with the unit's environment)
#      and a second ExaBGP receives the announcement of a configured prefix
#   7. the unit under systemd 257 in systemd-nspawn (tests/package/systemd.sh):
#      start, restart, reload, stop, restarts after ExaBGP gives up and after
#      the watchdog ends a frozen controller, a broken config, the process
#      check on another user's unit under the unit's sandbox
#   8. dpkg --purge announcer leaves nothing behind
#
# Build outputs stay under .cache/ (git-ignored). Exits non-zero on the first
# failure; the last line is "N passed, 0 failed" on success.
set -euo pipefail
export LC_ALL=C.UTF-8
umask 022

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=$REPO/.cache/package-test
SUITE=trixie
# The Debian mirror this host's apt already uses (DEBIAN_MIRROR overrides it).
host_mirror() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -- -security | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            | awk '{print $2}' | grep -v -- -security | head -n1 || true)
    fi
    echo "$uri"
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
if [ -z "$MIRROR" ]; then
    echo "package: no Debian mirror in /etc/apt; set DEBIAN_MIRROR" >&2
    exit 1
fi
DAY=$(date -u +%Y%m%d)
# A clean environment for everything that builds or runs Debian tools: no
# pyenv/venv python on PATH, no CI variables.
CLEANENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 HOME=/root TERM=dumb)

PASSED=0
T0=$(date +%s)
STEP_T=$T0
STEP_NAME=
TIMES=()
say() { printf 'package-test: %s\n' "$*" >&2; }
step() { # step NAME: ends the previous step (and reports its time), starts NAME
    local now
    now=$(date +%s)
    if [ -n "$STEP_NAME" ]; then
        TIMES+=("$STEP_NAME $((now - STEP_T))s")
        say "--- $STEP_NAME took $((now - STEP_T))s"
    fi
    [ -z "$1" ] || say "--- $1"
    STEP_NAME=$1
    STEP_T=$now
}
FAILED=0
ok() { PASSED=$((PASSED + 1)); say "ok: $*"; }
fail() { say "FAIL: $*"; echo "package: $PASSED passed, $((FAILED + 1)) failed"; exit 1; }
soft_fail() { FAILED=$((FAILED + 1)); say "FAIL: $*"; } # reported, the run goes on

if [ "$(id -u)" != 0 ]; then
    say "needs root (chroot, mounts, network namespace); skipped"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 1800 9 || fail "another package test holds $CACHE/lock"

RUN=$CACHE/run
MOUNTS=()
kill_chrooted() { # kill_chrooted DIR: every process whose root is under DIR (ours, by construction)
    local sig proc root found
    for sig in TERM KILL; do
        found=
        for proc in /proc/[0-9]*; do
            root=$(readlink "$proc/root" 2>/dev/null) || continue
            case $root in "$1" | "$1"/*) found=1; kill "-$sig" "${proc#/proc/}" 2>/dev/null || true ;; esac
        done
        [ -n "$found" ] || return 0
        [ "$sig" = KILL ] || sleep 1
    done
}
PIDS_FILE=$RUN/smoke.pids
cleanup() {
    local rc=$? i
    if [ -f "$PIDS_FILE" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$PIDS_FILE"
    fi
    kill_chrooted "$RUN"
    umount_all
    if awk -v r="$RUN/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        say "something is still mounted under $RUN: not removing it"
    elif [ "$rc" = 0 ] && [ -z "${KEEP:-}" ]; then
        rm -rf "$RUN"
    elif [ -d "$RUN" ]; then
        say "chroot kept in $RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Before anything: nothing of a previous run may still run or be mounted.
if [ -d "$RUN" ]; then
    kill_chrooted "$RUN"
    awk -v r="$RUN/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    if awk -v r="$RUN/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        fail "cannot unmount everything under $RUN"
    fi
    rm -rf "$RUN"
fi
mkdir -p "$RUN"

in_root() { # in_root DIR CMD...: run in the chroot DIR with a clean environment
    local dir=$1
    shift
    chroot "$dir" "${CLEANENV[@]}" DEBIAN_FRONTEND=noninteractive "$@"
}

umount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}

mount_in() { # mount_in TARGET MOUNT-ARGS...
    local target=$1
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    MOUNTS+=("$target")
}

# ---------------------------------------------------------------- 1. host tools
step "host tools"
HOST_PKGS=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
    build-essential mmdebstrap debian-archive-keyring util-linux iproute2 systemd-container)
missing=()
for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- 2. build
step "build"
VERSION=$(dpkg-parsechangelog -l "$REPO/debian/changelog" -S Version)
BUILD=$CACHE/build
rm -rf "$BUILD"
mkdir -p "$BUILD/announcer-$VERSION"
tar -C "$REPO" --exclude=./.git --exclude='./.venv*' --exclude=./.cache --exclude='*.egg-info' \
    --exclude=./build --exclude=./dist --exclude=__pycache__ --exclude=./.pybuild \
    --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.hypothesis \
    -cf - . | tar -C "$BUILD/announcer-$VERSION" -xf -
(cd "$BUILD/announcer-$VERSION" && "${CLEANENV[@]}" dpkg-checkbuilddeps) \
    || fail "build dependencies missing: keep HOST_PKGS in step with debian/control"
if ! (cd "$BUILD/announcer-$VERSION" && "${CLEANENV[@]}" dpkg-buildpackage -us -uc -b) >"$BUILD/build.log" 2>&1; then
    tail -n 40 "$BUILD/build.log" >&2
    fail "dpkg-buildpackage (log: $BUILD/build.log)"
fi
DEB=$BUILD/announcer_${VERSION}_all.deb
CHANGES=$(ls "$BUILD"/announcer_"$VERSION"_*.changes)
[ -f "$DEB" ] || fail "no $DEB"
ok "built $(basename "$DEB") ($(stat -c %s "$DEB") bytes)"

# checks/ of the tree is the subpackage announcer.checks (announcer/checks is a symlink
# to it): never a top-level module of that generic name in dist-packages.
DIST=./usr/lib/python3/dist-packages
FILES=$(dpkg-deb -c "$DEB" | awk '{print $6}')
TOPLEVEL=$(echo "$FILES" | sed -n "s|^$DIST/\([^/][^/]*\).*|\1|p" | sort -u | xargs)
for name in $TOPLEVEL; do
    case $name in announcer | announcer-*.dist-info) ;; *) fail "dist-packages/$name in the .deb: only announcer belongs there" ;; esac
done
for f in __init__.py base.py specs.py py.typed; do
    echo "$FILES" | grep -qx "$DIST/announcer/checks/$f" || fail "no $DIST/announcer/checks/$f in the .deb"
done
ok "dist-packages: $TOPLEVEL (checks as announcer/checks/, no top-level checks)"

# Every runtime dependency of pyproject.toml must reach Depends with its floor.
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
say "Depends: $DEPENDS"
PYDEPS=$(/usr/bin/python3 - "$REPO/pyproject.toml" <<'EOF'
import re, sys
try:
    import tomllib
except ImportError:  # Debian 12's python3 is 3.11: tomllib is there; keep a fallback anyway
    import tomli as tomllib
for req in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", req)
    print(f"{m.group(1)} {m.group(2)}" if m else f"{req} -")
EOF
)
while read -r name floor; do
    pkg=python3-$(echo "$name" | tr 'A-Z_.' 'a-z--')
    [ "$floor" != - ] || fail "pyproject dependency '$name' has no >= floor"
    echo "$DEPENDS" | grep -qF "$pkg (>= $floor)" \
        || fail "Depends lacks '$pkg (>= $floor)' (add '$name' to debian/py3dist-overrides)"
done <<<"$PYDEPS"
echo "$DEPENDS" | grep -qE '(^|, )exabgp( |,|$)' || fail "Depends lacks exabgp"
ok "Depends carries every pyproject floor and exabgp"

# ---------------------------------------------------------------- 3. chroots
make_tarball() { # make_tarball NAME [mmdebstrap args...]: cached per day
    local name=$1 tar
    shift
    tar=$CACHE/$SUITE-$name-$DAY.tar
    if [ ! -s "$tar" ]; then
        find "$CACHE" -maxdepth 1 -name "$SUITE-$name-*.tar" -delete
        say "mmdebstrap $SUITE ($name) -> $tar"
        "${CLEANENV[@]}" mmdebstrap --quiet --format=tar --variant=apt --skip=cleanup/apt/lists "$@" \
            "$SUITE" "$tar.tmp" "$MIRROR" >&2 || fail "mmdebstrap $name"
        mv "$tar.tmp" "$tar"
    fi
    echo "$tar"
}
step "chroots"
BASE_TAR=$(make_tarball base)
LINT_TAR=$(make_tarball lintian --include=lintian)
ARCHIVES=$CACHE/apt-archives-$DAY # downloaded .debs, reused by later runs today
find "$CACHE" -maxdepth 1 -name 'apt-archives-*' ! -name "apt-archives-$DAY" -exec rm -rf {} +
mkdir -p "$ARCHIVES/partial"
ok "chroot tarballs $(basename "$BASE_TAR") $(basename "$LINT_TAR")"

# ---------------------------------------------------------------- 4. lintian
step "lintian"
LINT=$RUN/lint
mkdir -p "$LINT"
tar -C "$LINT" -xf "$LINT_TAR"
mkdir -p "$LINT/tmp/pkg"
cp "$DEB" "$CHANGES" "$BUILD"/announcer_"$VERSION"_*.buildinfo "$LINT/tmp/pkg/"
in_root "$LINT" lintian --version >&2
chmod -R a+rX "$LINT/tmp/pkg"
if ! in_root "$LINT" setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env HOME=/tmp lintian --fail-on error,warning --display-info --pedantic \
    "/tmp/pkg/$(basename "$CHANGES")" >"$RUN/lintian.txt" 2>&1; then
    cat "$RUN/lintian.txt" >&2
    fail "lintian found errors or warnings"
fi
if [ -s "$RUN/lintian.txt" ]; then
    say "lintian (info/pedantic only):"
    sed 's/^/    /' "$RUN/lintian.txt" >&2
fi
ok "lintian --fail-on error,warning"
rm -rf "$LINT"

# ---------------------------------------------------------------- 5. install
step "install"
ROOT=$RUN/root
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE_TAR"
mount_in "$ROOT/proc" -t proc proc
mount_in "$ROOT/var/cache/apt/archives" --bind "$ARCHIVES"
cp "$DEB" "$ROOT/tmp/"
if ! in_root "$ROOT" apt-get install -y --no-install-recommends "/tmp/$(basename "$DEB")" \
    >"$RUN/apt.log" 2>&1; then
    cat "$RUN/apt.log" >&2
    fail "apt-get install ./$(basename "$DEB")"
fi
ok "apt-get install ./$(basename "$DEB") in $SUITE"

pkgver() { in_root "$ROOT" dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "-"; }
say "versions in the chroot:"
for p in announcer exabgp python3-exabgp python3 python3-pydantic \
    python3-tenacity python3-dnspython python3-prometheus-client python3-tomli-w systemd; do
    printf '    %-26s %s\n' "$p" "$(pkgver "$p")" >&2
done
case $(pkgver exabgp) in 4.2.*) ok "Debian's exabgp $(pkgver exabgp)" ;; *) fail "exabgp is $(pkgver exabgp), expected 4.2.x" ;; esac
case $(pkgver python3-pydantic) in 2.*) ok "python3-pydantic $(pkgver python3-pydantic)" ;; *) fail "python3-pydantic is $(pkgver python3-pydantic)" ;; esac

# The user, created by systemd-sysusers from /usr/lib/sysusers.d/announcer.conf.
PW=$(in_root "$ROOT" getent passwd announcer) || fail "no user announcer"
IFS=: read -r _ _ uid _ _ home shell <<<"$PW"
if ! { [ "$uid" -lt 1000 ] && [ "$home" = /var/lib/announcer ] && [ "$shell" = /usr/sbin/nologin ]; }; then
    fail "user announcer: $PW"
fi
in_root "$ROOT" getent group announcer >/dev/null || fail "no group announcer"
ok "system user: $PW"

# Conffiles and the configuration directory.
CONFFILES=$(in_root "$ROOT" dpkg-query -W -f='${Conffiles}' announcer)
for f in /etc/announcer/announcer.toml /etc/announcer/exabgp.conf; do
    echo "$CONFFILES" | grep -q " $f " || fail "$f is not a conffile: $CONFFILES"
done
[ -d "$ROOT/etc/announcer/conf.d" ] || fail "no /etc/announcer/conf.d"
ok "conffiles: $(echo "$CONFFILES" | awk '{print $1}' | xargs)"

# Reinstalling (the upgrade path of the maintainer scripts) keeps a local edit.
echo "# local edit" >>"$ROOT/etc/announcer/announcer.toml"
if ! in_root "$ROOT" apt-get install -y --reinstall "/tmp/$(basename "$DEB")" >"$RUN/reinstall.log" 2>&1; then
    cat "$RUN/reinstall.log" >&2
    fail "apt-get install --reinstall"
fi
tail -n 1 "$ROOT/etc/announcer/announcer.toml" | grep -q "^# local edit$" || fail "reinstall lost a local edit"
sed -i '$d' "$ROOT/etc/announcer/announcer.toml"
ok "reinstall (postinst configure with a previous version) keeps the local edit of a conffile"

# The CLI.
V=$(in_root "$ROOT" announcer --version 2>&1) || fail "announcer --version: $V"
[ "$V" = "announcer $VERSION" ] || fail "announcer --version says '$V', expected 'announcer $VERSION'"
ok "announcer --version: $V"
OUT=$(in_root "$ROOT" announcer check-config /etc/announcer/announcer.toml 2>&1) \
    || fail "check-config of the shipped config: $OUT"
echo "$OUT" | grep -q "(0 services, 0 prefixes)" || fail "the shipped config announces something: $OUT"
ok "check-config of the shipped config: $OUT"
# The commented examples in the shipped config must stay valid: uncomment them.
sed -E 's/^#([^ #]|    )/\1/' "$ROOT/etc/announcer/announcer.toml" >"$ROOT/tmp/examples.toml"
OUT=$(in_root "$ROOT" announcer check-config /tmp/examples.toml 2>&1) \
    || fail "the commented examples in announcer.toml no longer validate: $OUT"
ok "check-config of the uncommented examples: $OUT"

# The man page documents every subcommand the CLI has.
[ -f "$ROOT/usr/share/man/man1/announcer.1.gz" ] || fail "no man page"
SUBCOMMANDS=$(in_root "$ROOT" python3 -c '
import argparse
from announcer.cli import build_parser
for action in build_parser()._actions:
    if isinstance(action, argparse._SubParsersAction):
        print(" ".join(action.choices))
') || fail "cannot list the CLI's subcommands"
MAN=$(zcat "$ROOT/usr/share/man/man1/announcer.1.gz")
for c in $SUBCOMMANDS; do
    echo "$MAN" | grep -qE "^\.B(R)? ${c//-/\\\\-}( |$)" \
        || fail "man page lacks subcommand '$c' (debian/announcer.1)"
done
ok "man page covers: ${SUBCOMMANDS:-?}"

# The unit: where trixie expects it, enabled, valid, and how exposed.
UNIT=/usr/lib/systemd/system/announcer.service
[ -f "$ROOT$UNIT" ] || fail "no $UNIT"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/announcer.service" ] || fail "unit not enabled"
[ ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/exabgp.service" ] \
    || say "note: Debian's exabgp.service is enabled too (its package does that, not ours)"
if ! in_root "$ROOT" systemd-analyze verify --man=no "$UNIT" >"$RUN/verify.txt" 2>&1; then
    cat "$RUN/verify.txt" >&2
    fail "systemd-analyze verify $UNIT"
fi
ok "systemd-analyze verify $UNIT"
in_root "$ROOT" systemd-analyze security --offline=yes "$UNIT" >"$RUN/security.txt" 2>&1 || true
EXPOSURE=$(sed -n 's/.*Overall exposure level for announcer.service: \([0-9.]*\).*/\1/p' "$RUN/security.txt")
[ -n "$EXPOSURE" ] || { cat "$RUN/security.txt" >&2; fail "systemd-analyze security gave no score"; }
awk -v e="$EXPOSURE" 'BEGIN { exit !(e <= 2.5) }' \
    || { cat "$RUN/security.txt" >&2; fail "exposure $EXPOSURE > 2.5: the unit lost hardening"; }
ok "systemd-analyze security --offline=yes: exposure $EXPOSURE"

# The process check's unit form asks systemd for a unit's MainPID with systemctl, which
# an unprivileged user (the unit runs as "announcer") reaches over the system bus: a
# Debian system has one (systemd recommends it); this minimal chroot gets Debian's dbus.
if ! in_root "$ROOT" apt-get install -y --no-install-recommends dbus >"$RUN/dbus.log" 2>&1; then
    cat "$RUN/dbus.log" >&2
    fail "apt-get install dbus (the system bus, for the process check's unit form)"
fi
ok "dbus $(pkgver dbus) (the system bus the process check's unit form asks systemd over)"

# ---------------------------------------------------------------- 6. smoke run
step "smoke run"
# The shipped /etc/announcer, for the systemd step (the smoke run edits it).
SHIPPED=/var/tmp/announcer-shipped
cp -a "$ROOT/etc/announcer" "$ROOT$SHIPPED"
# shellcheck source=tests/package/smoke.sh
SMOKE_ROOT=$ROOT SMOKE_RUN=$RUN SMOKE_PIDS=$PIDS_FILE unshare --net -- bash "$REPO/tests/package/smoke.sh" \
    || fail "smoke run (logs in $ROOT/tmp/smoke/)"
rm -f "$PIDS_FILE"
ok "smoke run: the installed ExaBGP + announcer announced 192.0.2.10/32 to a peer"

# ---------------------------------------------------------------- 7. systemd
step "systemd"
umount_all # systemd-nspawn mounts what the container needs itself
if [ "${SYSTEMD_TEST:-1}" = 0 ]; then
    say "SKIP: SYSTEMD_TEST=0"
else
    if SYSTEMD_ROOT=$ROOT SYSTEMD_PIDS=$PIDS_FILE SHIPPED=$SHIPPED SYSTEMD_LOG=$RUN/nspawn.log \
        SYSTEMD_FIGURES=$REPO/.cache/faults/package-systemd.json \
        bash "$REPO/tests/package/systemd.sh"; then
        ok "announcer.service under systemd $(sed -n 's/^systemd \([0-9]*\).*/\1/p' <(chroot "$ROOT" systemctl --version) | head -n 1): starts with the shipped config, announces, stops, comes back after ExaBGP gives up and after its watchdog"
    else
        soft_fail "announcer.service under systemd (console: $RUN/nspawn.log); going on to the purge"
    fi
    rm -f "$PIDS_FILE"
    # the container must have left nothing mounted in the chroot
    if awk -v r="$ROOT/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        fail "the container left mounts under $ROOT"
    fi
fi

# ---------------------------------------------------------------- 8. purge
step "purge"
if ! in_root "$ROOT" dpkg --purge announcer >"$RUN/purge.log" 2>&1; then
    cat "$RUN/purge.log" >&2
    fail "dpkg --purge announcer"
fi
state=$(in_root "$ROOT" dpkg-query -W -f='${db:Status-Status}' announcer 2>/dev/null || echo gone)
[ "$state" = not-installed ] || [ "$state" = gone ] || fail "after purge the package is '$state'"
for p in /etc/announcer /usr/bin/announcer /usr/lib/python3/dist-packages/announcer \
    /usr/lib/python3/dist-packages/checks "$UNIT" /usr/lib/sysusers.d/announcer.conf \
    /etc/systemd/system/multi-user.target.wants/announcer.service /var/lib/announcer; do
    if [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then fail "left behind after purge: $p"; fi
done
ok "dpkg --purge announcer left nothing behind"

step ""
say "timings: ${TIMES[*]}; total $(($(date +%s) - T0))s"
echo "package: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
