#!/bin/bash
# Smoke run of the installed package, called by run.sh inside
# `unshare --net` (a private network namespace with only loopback), with
#   SMOKE_ROOT  the Debian 13 chroot where announcer is installed (/proc mounted)
#   SMOKE_PIDS  a file to record the PIDs started here (run.sh kills them too)
#
# Sender: the installed ExaBGP with /etc/announcer/exabgp.conf (the shipped
# file plus one neighbour), started as the unit starts it: as the unit's User,
# with the unit's Environment=, UMask= and WorkingDirectory=, so it runs the
# installed /usr/bin/announcer as its API process. Its config has one service
# with a file check on a file that exists.
# Receiver: a second ExaBGP (root, passive on 127.0.0.2:179) that writes the
# UPDATEs it receives as JSON (`receive { parsed; update; }`).
set -euo pipefail

R=${SMOKE_ROOT:?}
PIDS=${SMOKE_PIDS:?}
S=$R/tmp/smoke
UNIT=$R/usr/lib/systemd/system/announcer.service
PREFIX=192.0.2.10/32
CLEAN=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8)

say() { printf 'smoke: %s\n' "$*" >&2; }
started=()
stop_all() {
    local pid
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${started[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT
show_logs() {
    local f
    for f in "$S"/receiver.log "$S"/updates.json "$S"/sender.log "$S"/notify.log; do
        [ -f "$f" ] || continue
        say "---- ${f#"$R"} (last 40 lines)"
        tail -n 40 "$f" | sed 's/^/    /' >&2
    done
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        if "$@"; then return 0; fi
        sleep 0.25
    done
    say "timed out after ${limit}s waiting for: $what"
    show_logs
    return 1
}

ip link set lo up
mkdir -p "$S"

# ---- the unit's view of the world, read from the installed unit file
unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
USER_=$(unit_value User | tail -n 1)
GROUP_=$(unit_value Group | tail -n 1)
UMASK_=$(unit_value UMask | tail -n 1)
WORKDIR=$(unit_value WorkingDirectory | tail -n 1)
EXECSTART=$(unit_value ExecStart | tail -n 1)
EXECSTOP=$(unit_value ExecStop | tail -n 1)
mapfile -t UNIT_ENV < <(unit_value Environment)
say "unit: User=$USER_ ExecStart=$EXECSTART"
say "unit: Environment=${UNIT_ENV[*]}"
# What RuntimeDirectory= and StateDirectory= would create.
for kind in Runtime:/run State:/var/lib; do
    name=$(unit_value "${kind%%:*}Directory" | tail -n 1)
    mode=$(unit_value "${kind%%:*}DirectoryMode" | tail -n 1)
    install -d -m "${mode:-0755}" -o "$(chroot "$R" id -u "$USER_")" -g "$(chroot "$R" id -g "$USER_")" \
        "$R${kind#*:}/$name"
done

# ---- receiver
cat >"$S/dump.sh" <<'EOF'
#!/bin/sh
# Everything ExaBGP sends its API process (JSON, one message per line). No
# exec: the shell keeps ExaBGP's stdout pipe open (EOF there means "died").
cat >>/tmp/smoke/updates.json
EOF
chmod 755 "$S/dump.sh"
cat >"$S/receiver.conf" <<'EOF'
process dump {
    run /tmp/smoke/dump.sh;
    encoder json;
}

neighbor 127.0.0.1 {
    router-id 127.0.0.2;
    local-address 127.0.0.2;
    local-as 65001;
    peer-as 65000;
    hold-time 30;
    passive true;
    listen 179;
    family { ipv4 unicast; }
    api {
        processes [ dump ];
        receive { parsed; update; }
    }
}
EOF
: >"$S/updates.json"
chroot "$R" "${CLEAN[@]}" exabgp_daemon_daemonize=false exabgp_daemon_user=root \
    exabgp_log_destination=stdout exabgp_api_cli=false \
    /usr/sbin/exabgp /tmp/smoke/receiver.conf >"$S/receiver.log" 2>&1 &
started+=($!)
echo $! >>"$PIDS"

# ---- sender: the shipped exabgp.conf plus a neighbour; one service
cat >>"$R/etc/announcer/exabgp.conf" <<'EOF'

# added by tests/package/smoke.sh
neighbor 127.0.0.2 {
    router-id 127.0.0.1;
    local-address 127.0.0.1;
    local-as 65000;
    peer-as 65001;
    hold-time 30;
    family { ipv4 unicast; }
    api {
        processes [ announcer ];
        neighbor-changes;
    }
}
EOF
touch "$S/healthy"
cat >"$R/etc/announcer/announcer.toml" <<EOF
# written by tests/package/smoke.sh
local_as = 65000
allowed_prefixes = ["192.0.2.0/24"]

[defaults]
address_guard = false  # the test prefix is on no interface here
interval = 0.5
fast_interval = 0.25
rise = 1
fall = 1
drain_seconds = 2

[[service]]
name = "smoke"
prefixes = ["$PREFIX"]
checks = [{ type = "file", path = "/tmp/smoke/healthy" }]
EOF
chroot "$R" "${CLEAN[@]}" announcer check-config /etc/announcer/announcer.toml >&2

# systemd's side of Type=notify: a datagram socket that logs what it gets.
# WATCHDOG_USEC turns the controller's watchdog on (any value: the controller
# replaces it with its stall_limit + 5 s, 15 s by default, and pings every 1 s).
/usr/bin/python3 - "$S/notify.sock" "$S/notify.log" <<'EOF' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o666)
with open(log, "a", buffering=1) as out:
    while True:
        data, _ = sock.recvfrom(4096)
        out.write(data.decode(errors="replace").replace("\n", " ") + "\n")
EOF
started+=($!)
echo $! >>"$PIDS"
NOTIFY_ENV=(NOTIFY_SOCKET=/tmp/smoke/notify.sock WATCHDOG_USEC=2000000)

wait_for 30 "the receiver listening on 127.0.0.2:179" \
    sh -c 'ss -Hltn "sport = :179" | grep -q 127.0.0.2'
# shellcheck disable=SC2086 # ExecStart is a command line: split it like systemd does
chroot --userspec="$USER_:$GROUP_" "$R" "${CLEAN[@]}" "${UNIT_ENV[@]}" "${NOTIFY_ENV[@]}" \
    sh -c "umask $UMASK_ && cd $WORKDIR && exec $EXECSTART" >"$S/sender.log" 2>&1 &
SENDER=$!
started+=("$SENDER")
echo "$SENDER" >>"$PIDS"

has_announce() { grep -q "\"announce\".*\"${PREFIX}\"" "$S/updates.json"; }
if ! wait_for 60 "an UPDATE announcing $PREFIX at the receiver" has_announce; then
    exit 1
fi
say "announced: $(grep -m 1 "\"${PREFIX}\"" "$S/updates.json" | cut -c 1-300)"
# ExaBGP and the controller run as the unit's user.
controllers=$(pgrep -P "$SENDER" -f "announcer run" || true)
[ -n "$controllers" ] || { say "no 'announcer run' child of ExaBGP"; show_logs; exit 1; }
want_uid=$(chroot "$R" id -u "$USER_")
for pid in "$SENDER" $controllers; do
    uid=$(ps -o uid= -p "$pid" | tr -d ' ')
    [ "$uid" = "$want_uid" ] || { say "pid $pid runs as uid $uid, not $USER_ ($want_uid)"; exit 1; }
done
say "ExaBGP (pid $SENDER) and announcer run (pid $controllers) run as $USER_ (uid $want_uid)"

# ---- Type=notify, NotifyAccess=all, WatchdogSec=: the controller (ExaBGP's
# child) must report READY=1 and then WATCHDOG=1 to the service's socket.
notified() { grep -q "$1" "$S/notify.log" 2>/dev/null; }
wait_for 30 "READY=1 on the notify socket" notified 'READY=1'
wait_for 10 "WATCHDOG=1 on the notify socket" notified 'WATCHDOG=1'
wait_for 10 "WATCHDOG_USEC=15000000 (the default stall_limit + 5 s) with the first WATCHDOG=1" \
    notified '^WATCHDOG=1 WATCHDOG_USEC=15000000$'
say "notify socket got: $(sort -u "$S/notify.log" | tr '\n' '|' | cut -c 1-200)"

# ---- stop as systemd would: ExecStop (drain) if the CLI has it, then SIGTERM
if chroot "$R" "${CLEAN[@]}" announcer --help 2>&1 | grep -qE '^ +drain '; then
    stop_cmd=${EXECSTOP#-}
    say "ExecStop: $stop_cmd"
    # shellcheck disable=SC2086
    chroot --userspec="$USER_:$GROUP_" "$R" "${CLEAN[@]}" "${UNIT_ENV[@]}" $stop_cmd >&2 \
        || { say "ExecStop failed"; show_logs; exit 1; }
    has_withdraw() { grep -q "\"withdraw\".*\"${PREFIX}\"" "$S/updates.json"; }
    wait_for 10 "a withdrawal of $PREFIX after the drain" has_withdraw
    say "drained and withdrawn"
else
    say "SKIP drain: this CLI has no 'drain' command yet (ExecStop would fail, and is ignored)"
fi
kill -TERM "$SENDER"
(sleep 20 && kill -KILL "$SENDER" 2>/dev/null) &
killer=$!
rc=0
wait "$SENDER" || rc=$?
kill "$killer" 2>/dev/null || true
if [ "$rc" -ge 128 ] && [ "$rc" != 143 ]; then
    say "ExaBGP did not stop within 20s of SIGTERM (exit $rc)"
    show_logs
    exit 1
fi
say "ExaBGP stopped on SIGTERM (exit $rc)"
