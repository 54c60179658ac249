#!/bin/sh
# The tunnel devices of drain forwarding on a kernel that has them all, when the host's
# kernel lacks IPIP or GRE (built without them, or without module support): boots
# Debian's user-mode-linux kernel (apt-get install user-mode-linux kmod) on the host's
# own file system and runs, inside it, the kernel test's three-node traffic case for
# vxlan, ipip and gre (tests/integration/lab/test_forwarding_kernel_lab.py -k one_device).
#
# What it does not check: that kernel (6.1 in Debian 12 and 13) has no nf_tables "ip"
# family, so libnftables is replaced by a stand-in that accepts every command: the
# marking rule is not exercised (the test marks its packets itself, with SO_MARK), the
# devices, policy rules, routes and neighbour entries are. Needs root; prints the test's
# output and exits with its status. Writes only under a temporary directory (and the
# tree's __pycache__): the guest mounts its own /proc, /sys, /dev and /run.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
UML=$(command -v linux.uml || command -v linux || true)
MODPROBE=$(command -v modprobe || true)
MODULES=
for dir in /usr/lib/uml/modules/*; do
    if [ -d "$dir" ]; then MODULES=$dir; break; fi
done
if [ -z "$UML" ] || [ -z "$MODULES" ]; then
    echo "needs user-mode-linux (apt-get install user-mode-linux)" >&2
    exit 2
fi
if [ -z "$MODPROBE" ]; then
    echo "needs modprobe (apt-get install kmod)" >&2
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/lib/modules" "$WORK/stub"
ln -s "$MODULES" "$WORK/root/lib/modules/$(basename "$MODULES")"
cat >"$WORK/stub/nftables.py" <<'EOF'
"""libnftables stand-in: this kernel has no nf_tables "ip" family (see the script)."""


class Nftables:
    def cmd(self, text):
        return 0, "", ""

    def set_json_output(self, on):
        pass
EOF
# The guest's kernel asks for modules through this (its own tree, not the host's).
cat >"$WORK/modprobe" <<EOF
#!/bin/sh
exec $MODPROBE -d $WORK/root "\$@"
EOF
cat >"$WORK/init" <<EOF
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
exec >$WORK/out.txt 2>&1
echo $WORK/modprobe >/proc/sys/kernel/modprobe
uname -r
for m in veth vxlan ipip ip_gre nf_conntrack; do $WORK/modprobe \$m || echo "cannot load \$m"; done
cd $REPO
PYTHONPATH=$WORK/stub timeout 600 .venv/bin/python -m pytest -p no:cacheprovider -v -rs \\
    tests/integration/lab/test_forwarding_kernel_lab.py -k one_device
echo "exit \$?" >$WORK/status
sync
poweroff -f
EOF
chmod 755 "$WORK/modprobe" "$WORK/init"
"$UML" mem=1024M root=/dev/root rootfstype=hostfs rootflags=/ rw init="$WORK/init" \
    con=null con0=null,fd:1 </dev/null >"$WORK/console.txt" 2>&1 || true
cat "$WORK/out.txt" 2>/dev/null || { cat "$WORK/console.txt"; exit 1; }
status=$(sed -n 's/^exit //p' "$WORK/status" 2>/dev/null || true)
exit "${status:-1}"
