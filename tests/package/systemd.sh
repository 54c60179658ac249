#!/bin/bash
# announcer.service under a real systemd: boots the Debian 13 chroot with
# systemd-nspawn (private network: loopback only) and drives the installed
# unit, sandbox and all. Called by run.sh with
#   SYSTEMD_ROOT  the chroot, announcer installed, nothing mounted in it
#   SYSTEMD_PIDS  a file to record the PIDs started here (run.sh kills them too)
#   SHIPPED       a directory in the chroot holding the shipped /etc/announcer
#   SYSTEMD_LOG   where the container's console goes
#   SYSTEMD_FIGURES  optional: a JSON file (on the host) to leave the figures
#                 of steps 5 and 6 in, for the fault report (rows 2c and 3b)
#
#  1. with the shipped configuration (no neighbour, no service) the enabled
#     unit starts at boot and becomes active (READY=1);
#  2. with one neighbour (a second ExaBGP, run by systemd-run) and one service:
#     restart, active, the peer receives the announcement; ExaBGP and the
#     controller run as "announcer" with only CAP_NET_BIND_SERVICE and the
#     unit's LimitNOFILE as their open-files soft limit;
#     the controller set the watchdog to the default stall_limit + 5 s (15 s);
#  3. reload and stop (ExecStop drains first, when the CLI has drain): the
#     stop completes within TimeoutStopSec, cleanly, and nothing restarted
#     nor is about to (Restart=always leaves an explicit stop alone);
#  4. started again (with stall_limit = 6), it announces again: the stop's
#     drain did not stick; the watchdog follows stall_limit (11 s);
#  5. the controller killed over and over: ExaBGP gives up ("Too many death",
#     exit status 0) and the unit starts again by itself and announces;
#  6. the controller frozen (SIGSTOP): systemd's watchdog ends the service
#     after stall_limit + 5 s, the peer loses the route when the session drops
#     (how long it stayed is logged), and the unit comes back and announces;
#  7. with a broken announcer.toml the start fails at once, saying why, the
#     unit keeps retrying every RestartSec (never "failed"), and comes up by
#     itself once the file is fixed.
#  8. the process check on a transient service run as "nobody" (which
#     ProtectProc=invisible hides from the controller's /proc), in both forms:
#     its unit's main process and the pid file it writes: both pass under the
#     sandbox; a SIGKILL of that process withdraws at once (an event, not a
#     round: the rounds are 5 s apart and fall is 3); systemd's restart brings
#     a new process, which is followed and announced again; with grace = 3 the
#     same kill and restart withdraw nothing.
#  9. the drain-forwarding drop-in the package ships (docs/drain.md), installed:
#     ExaBGP and the controller get CAP_NET_ADMIN (bounding set: it and
#     CAP_NET_BIND_SERVICE, nothing else; in the controller's effective set) and a
#     writable /proc/sys; the drop-in removed again: neither (step 2's set, /proc/sys
#     read-only), so the shipped unit alone never grants them.
set -euo pipefail

R=${SYSTEMD_ROOT:?}
PIDS=${SYSTEMD_PIDS:?}
SHIPPED=${SHIPPED:?}
PREFIX=192.0.2.20/32
T=/srv/pkgtest # test files inside the container (its /tmp is a tmpfs)
LOG=${SYSTEMD_LOG:?}
FIGURES=${SYSTEMD_FIGURES:-}

say() { printf 'systemd: [%3ss] %s\n' "$SECONDS" "$*" >&2; }
NSPAWN=
INIT=
in_ct() { nsenter -t "$INIT" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
shutdown_ct() {
    [ -n "$NSPAWN" ] || return 0
    kill -TERM "$NSPAWN" 2>/dev/null || true # nspawn: a clean poweroff of the container
    for _ in $(seq 120); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
    NSPAWN=
}
trap shutdown_ct EXIT
journal() { in_ct journalctl --no-pager -o short-monotonic "$@" 2>&1 | tail -n 40 | sed 's/^/    /' >&2; }
fail() {
    say "FAIL: $*"
    if [ -n "$INIT" ]; then
        in_ct systemctl status --no-pager -l announcer.service 2>&1 | sed 's/^/    /' >&2 || true
        journal -u announcer.service || true
        [ ! -f "$R$T/updates.json" ] || tail -n 5 "$R$T/updates.json" | cut -c 1-300 >&2
    fi
    exit 1
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.25
    done
    fail "timed out after ${limit}s waiting for: $what"
}
wait_for_quiet() { # wait_for_quiet SECONDS COMMAND...: like wait_for, returns 1 on timeout
    local limit=$1 i
    shift
    for ((i = 0; i < limit * 4; i++)); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.25
    done
    return 1
}
FAILED=()
soft_fail() { # soft_fail MESSAGE: report with the journal, go on, fail at the end
    say "FAIL: $*"
    in_ct journalctl --no-pager -o cat -u announcer.service 2>&1 | tail -n 15 | sed 's/^/    /' >&2 || true
    FAILED+=("$*")
}
prop() { in_ct systemctl show -P "$1" announcer.service; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; } # since T: seconds, 0.1
# The peer's log from line $1 on, one event a line: "TIME announce|withdraw|up|down".
peer_events() {
    tail -n +"$1" "$R$T/updates.json" | /usr/bin/python3 -c '
import json, sys
prefix = sys.argv[1]
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    neighbor = msg.get("neighbor", {})
    if msg.get("type") == "state":
        print("%.3f %s" % (msg["time"], neighbor.get("state")))
        continue
    update = neighbor.get("message", {}).get("update", {})
    for kind in ("announce", "withdraw"):
        if prefix in json.dumps(update.get(kind, {})):
            print("%.3f %s" % (msg["time"], kind))
' "$PREFIX"
}
lines() { wc -l <"$R$T/updates.json"; }
# The first peer event of kind $2 after line $1, as "TIME" (nothing if none yet).
peer_first() { peer_events "$(($1 + 1))" | awk -v k="$2" '$2 == k { print $1; exit }'; }
main_pid_is_new() { # main_pid_is_new OLD: a new ExaBGP runs and the unit is active
    local pid
    pid=$(prop MainPID)
    [ "$pid" != 0 ] && [ "$pid" != "$1" ] && [ "$(prop SubState)" = running ]
}
controller() { in_ct pgrep -P "$(prop MainPID)" -f 'announcer run'; }

# Fail fast instead of after the default 90 s if READY=1 never comes.
mkdir -p "$R/etc/systemd/system/announcer.service.d" "$R$T"
cat >"$R/etc/systemd/system/announcer.service.d/pkgtest.conf" <<'EOF'
[Service]
TimeoutStartSec=30s
EOF
rm -rf "$R/etc/announcer"
cp -a "$R$SHIPPED" "$R/etc/announcer"

# ---- boot
systemd-nspawn -D "$R" --register=no --keep-unit --private-network --boot --console=read-only -q \
    </dev/null >"$LOG" 2>&1 &
NSPAWN=$!
echo "$NSPAWN" >>"$PIDS"
for _ in $(seq 100); do
    INIT=$(pgrep -P "$NSPAWN" | head -n 1 || true)
    [ -z "$INIT" ] || break
    sleep 0.1
done
[ -n "$INIT" ] || { cat "$LOG" >&2; fail "systemd-nspawn did not start the container"; }
# Up enough to be asked (boot itself waits for announcer.service, which step 1 judges).
wait_for 60 "the container's systemd to answer" \
    sh -c "nsenter -t $INIT -a systemctl is-system-running 2>/dev/null | grep -qE '^(starting|running|degraded)$'"
say "booted: systemd $(in_ct systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') in the container"

# ---- 1. the shipped configuration: enabled, started at boot, READY=1
is_active() { [ "$(in_ct systemctl is-active announcer.service)" = active ]; }
if wait_for_quiet 40 is_active; then
    say "1. shipped configuration: announcer.service is active (no neighbour, no service)"
else
    soft_fail "1. with the shipped configuration (no service) announcer.service never becomes active: no READY=1 within TimeoutStartSec"
fi

# ---- 2. a neighbour and a service
cat >"$R$T/dump.sh" <<'EOF'
#!/bin/sh
cat >>/srv/pkgtest/updates.json
EOF
chmod 755 "$R$T/dump.sh"
: >"$R$T/updates.json"
cat >"$R$T/receiver.conf" <<'EOF'
process dump {
    run /srv/pkgtest/dump.sh;
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
    api { processes [ dump ]; neighbor-changes; receive { parsed; update; } }
}
EOF
in_ct systemd-run --quiet --unit=pkgtest-receiver \
    -E exabgp_daemon_daemonize=false -E exabgp_daemon_user=root -E exabgp_api_cli=false \
    -E exabgp_log_destination=stdout /usr/sbin/exabgp "$T/receiver.conf"
cat >>"$R/etc/announcer/exabgp.conf" <<'EOF'

# added by tests/package/systemd.sh
neighbor 127.0.0.2 {
    router-id 127.0.0.1;
    local-address 127.0.0.1;
    local-as 65000;
    peer-as 65001;
    hold-time 30;
    family { ipv4 unicast; }
    api { processes [ announcer ]; neighbor-changes; }
}
EOF
touch "$R$T/healthy"
cat >"$R/etc/announcer/announcer.toml" <<EOF
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
name = "pkgtest"
prefixes = ["$PREFIX"]
checks = [{ type = "file", path = "$T/healthy" }]
EOF
in_ct announcer check-config /etc/announcer/announcer.toml >&2
wait_for 30 "the receiver listening on 127.0.0.2:179" \
    sh -c "nsenter -t $INIT -n ss -Hltn 'sport = :179' | grep -q 127.0.0.2"
start=$(date +%s)
in_ct systemctl restart announcer.service || fail "systemctl restart announcer.service"
say "2. restart (through ExecStop) took $(($(date +%s) - start))s"
[ "$(in_ct systemctl is-active announcer.service)" = active ] || fail "announcer.service not active"
has() { grep -q "\"$1\".*\"${PREFIX}\"" "$R$T/updates.json"; }
wait_for 30 "the peer to receive $PREFIX from announcer.service" has announce
say "2. the peer received the announcement of $PREFIX"

MAIN=$(prop MainPID)
uid=$(in_ct id -u announcer)
# Checks may hold up to 2,000 sockets at once: the installed unit must allow
# more than that, and systemd must have applied it (soft limit).
NOFILE=$(sed -n 's/^LimitNOFILE=\([0-9]*\)$/\1/p' "$R/usr/lib/systemd/system/announcer.service")
[ -n "$NOFILE" ] || fail "the installed unit sets no numeric LimitNOFILE="
[ "$NOFILE" -ge 4096 ] || fail "LimitNOFILE=$NOFILE leaves too little room for 2,000 check sockets"
[ "$(prop LimitNOFILESoft)" = "$NOFILE" ] || fail "systemd's LimitNOFILESoft is $(prop LimitNOFILESoft), not $NOFILE"
# systemd lowers a limit above its own hard limit (inherited from whoever
# started the container) without a word: say so rather than blame the unit.
ceiling=$(in_ct cat /proc/1/limits | awk '/^Max open files/ { print $5 }')
[ "$ceiling" = unlimited ] || [ "$ceiling" -ge "$NOFILE" ] \
    || fail "the container's systemd may not give more than $ceiling open files (its hard limit, from the host): LimitNOFILE=$NOFILE cannot be proven here"
for pid in $MAIN $(in_ct pgrep -P "$MAIN" || true); do
    status=$(in_ct cat "/proc/$pid/status")
    puid=$(echo "$status" | awk '/^Uid:/ { print $2 }')
    capeff=$(echo "$status" | awk '/^CapEff:/ { print $2 }')
    capbnd=$(echo "$status" | awk '/^CapBnd:/ { print $2 }')
    cmd=$(in_ct cat "/proc/$pid/cmdline" | tr '\0' ' ')
    [ "$puid" = "$uid" ] || fail "pid $pid ($cmd) runs as uid $puid, not announcer ($uid)"
    # 0x400 is CAP_NET_BIND_SERVICE (10): nothing else, not even in the bounding set
    [ "$capbnd" = 0000000000000400 ] || fail "pid $pid ($cmd): CapBnd=$capbnd"
    case $capeff in 0000000000000400 | 0000000000000000) ;; *) fail "pid $pid ($cmd): CapEff=$capeff" ;; esac
    nofile=$(in_ct cat "/proc/$pid/limits" | awk '/^Max open files/ { print $4 }')
    [ "$nofile" = "$NOFILE" ] || fail "pid $pid ($cmd): open-files soft limit $nofile, not the unit's LimitNOFILE=$NOFILE"
    say "2. pid $pid uid $puid CapEff=$capeff CapBnd=$capbnd nofile=$nofile: $cmd"
done
# The limit is for the controller's check sockets: systemd sets it on ExaBGP,
# and it must reach ExaBGP's child, the controller.
ctl=$(controller) || fail "no controller (announcer run) under ExaBGP (pid $MAIN)"
nofile=$(in_ct cat "/proc/$ctl/limits" | awk '/^Max open files/ { print $4 }')
[ "$nofile" = "$NOFILE" ] || fail "the controller (pid $ctl) has an open-files soft limit of $nofile, not $NOFILE"
say "2. the controller (pid $ctl) may open $nofile files (soft limit; LimitNOFILE=$NOFILE)"
# The controller replaced WatchdogSec= with the default stall_limit (10 s) + 5 s.
wd=$(prop WatchdogUSec)
[ "$wd" = 15s ] || fail "watchdog $wd, expected 15s (the default stall_limit + 5 s, set by the controller)"
say "2. watchdog: $wd"

# ---- 3. reload, stop
if in_ct announcer --help 2>&1 | grep -qE '^ +reload '; then
    in_ct systemctl reload announcer.service || fail "systemctl reload announcer.service"
    [ "$(in_ct systemctl is-active announcer.service)" = active ] || fail "not active after reload"
    say "3. reload: ok"
else
    say "3. SKIP reload: this CLI has no 'reload' command yet"
fi
DRAIN=no
if in_ct announcer --help 2>&1 | grep -qE '^ +drain '; then DRAIN=yes; fi
start=$(date +%s)
in_ct systemctl stop announcer.service || fail "systemctl stop announcer.service"
took=$(($(date +%s) - start))
result=$(prop Result)
restarts=$(prop NRestarts)
[ "$result" = success ] || fail "stop: Result=$result"
[ "$restarts" = 0 ] || fail "the unit restarted $restarts times"
# Restart=always leaves an explicit stop alone: systemd decides when the stop
# job ends, and a restart to come would show as activating/auto-restart now.
state=$(prop ActiveState)/$(prop SubState)
[ "$state" = inactive/dead ] || fail "after systemctl stop the unit is $state, not inactive/dead"
if [ "$DRAIN" = yes ]; then
    has withdraw || fail "no withdrawal of $PREFIX reached the peer during the stop (drain)"
    say "3. stop drained (withdrawal seen by the peer) and took ${took}s, Result=$result"
else
    say "3. stop took ${took}s, Result=$result (SKIP drain: this CLI has no 'drain' command yet)"
fi

# ---- 4. a stop's drain must not outlive the stop: started again, the node
# announces again (an operator's "announcer drain" is another matter).
# With stall_limit = 6 the controller asks systemd for an 11 s watchdog.
TOML=$R/etc/announcer/announcer.toml
sed -i '1i stall_limit = 6.0 # pkgtest' "$TOML"
seen=$(lines)
in_ct systemctl start announcer.service || fail "systemctl start announcer.service (after the stop)"
has_new() { [ -n "$(peer_first "$seen" announce)" ]; }
if wait_for_quiet 30 has_new; then
    say "4. started again after the stop: $PREFIX announced again"
else
    in_ct announcer status >&2 || true
    soft_fail "4. started again after a stop, announcer.service does not announce $PREFIX again (the stop's drain stuck)"
fi
wd=$(prop WatchdogUSec)
[ "$wd" = 11s ] || fail "with stall_limit = 6 the watchdog is $wd, expected 11s"
say "4. stall_limit = 6: watchdog $wd"
sed -i '/# pkgtest$/d' "$TOML" # the next start (step 5's) has the default again

# ---- 5. ExaBGP gives up after more than 5 deaths of the controller in one
# 64 s window and exits 0; Restart=always starts the unit again.
MAIN=$(prop MainPID)
restarts=$(prop NRestarts)
t0=$(now)
kills=0
gone() { ! in_ct kill -0 "$MAIN" 2>/dev/null; }
while ! gone && [ "$kills" -lt 20 ]; do
    pid=
    for _ in $(seq 40); do
        pid=$(in_ct pgrep -P "$MAIN" -f 'announcer run' || true)
        [ -z "$pid" ] || gone || break
        sleep 0.1
    done
    [ -n "$pid" ] || break
    in_ct kill -KILL "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    sleep 0.5
done
wait_for 30 "ExaBGP (pid $MAIN) to give up after $kills kills of the controller" gone
gave_up=$(since "$t0")
seen=$(lines) # what the peer gets from now on comes from a new ExaBGP
in_ct journalctl --no-pager -o cat -u announcer.service --since "@${t0%.*}" | grep -q "Too many death" \
    || fail "ExaBGP exited, but not because it gave up on the controller"
say "5. ExaBGP gave up after $kills kills of the controller in ${gave_up}s (\"Too many death\")"
t1=$(now)
wait_for 60 "announcer.service to start again by itself after ExaBGP gave up" main_pid_is_new "$MAIN"
[ "$(prop NRestarts)" -gt "$restarts" ] || fail "NRestarts did not grow"
back=$(since "$t1")
wait_for 30 "the peer to receive $PREFIX again after the automatic restart" has_new
again=$(awk -v a="$t1" -v b="$(peer_first "$seen" announce)" 'BEGIN { printf "%.1f", b - a }')
say "5. the unit started again by itself ${back}s after ExaBGP exited; the peer had $PREFIX again after ${again}s"
wd=$(prop WatchdogUSec)
[ "$wd" = 15s ] || fail "after the automatic restart the watchdog is $wd, expected 15s again"

# ---- 6. a frozen controller: its routes stay announced until systemd's
# watchdog ends ExaBGP (the session drops), then the unit comes back.
MAIN=$(prop MainPID)
restarts=$(prop NRestarts)
pid=$(controller) || fail "no controller under ExaBGP (pid $MAIN)"
sleep 2 # a few pings of the new controller
seen=$(lines)
t_stop=$(now)
in_ct kill -STOP "$pid"
say "6. SIGSTOP to the controller (pid $pid) at $t_stop"
down() { [ -n "$(peer_first "$seen" down)" ]; }
wait_for 40 "the peer to lose the session (systemd's watchdog ending ExaBGP)" down
t_down=$(peer_first "$seen" down)
stale=$(awk -v a="$t_stop" -v b="$t_down" 'BEGIN { printf "%.1f", b - a }')
t_wd=$(in_ct journalctl --no-pager -o short-unix -u announcer.service --since "@${t_stop%.*}" \
    | awk '/Watchdog timeout/ { print $1; exit }')
[ -n "$t_wd" ] || fail "no \"Watchdog timeout\" for announcer.service in the journal"
fired=$(awk -v a="$t_stop" -v b="$t_wd" 'BEGIN { printf "%.1f", b - a }')
limit=$(in_ct journalctl --no-pager -o cat -u announcer.service --since "@${t_stop%.*}" \
    | sed -n 's/.*Watchdog timeout (limit \([0-9]*\)s).*/\1/p' | head -n 1)
[ "$limit" = 15 ] || fail "the watchdog's limit was '${limit}s', not 15s"
if peer_events "$((seen + 1))" | awk -v t="$t_down" '$2 == "withdraw" && $1 < t { found = 1 } END { exit !found }'; then
    fail "the frozen controller's route was withdrawn by an UPDATE before the session dropped"
fi
say "6. watchdog (limit 15s) fired ${fired}s after SIGSTOP; the peer lost the session, and the route, ${stale}s after SIGSTOP: the stale route lasted ${stale}s"
awk -v s="$stale" 'BEGIN { exit !(s <= 15 + 3) }' || fail "the frozen controller's route lasted ${stale}s, more than the 15 s watchdog + 3 s"
wait_for 60 "announcer.service to start again after its watchdog" main_pid_is_new "$MAIN"
[ "$(prop NRestarts)" -gt "$restarts" ] || fail "NRestarts did not grow after the watchdog"
wait_for 30 "the peer to receive $PREFIX again after the watchdog's restart" has_new
back6=$(awk -v a="$t_stop" -v b="$(peer_first "$seen" announce)" 'BEGIN { printf "%.1f", b - a }')
say "6. back and announcing ${back6}s after SIGSTOP ($(peer_events "$((seen + 1))" | awk '{ printf "%s%.1f %s", sep, $1 - t, $2; sep = ", " }' t="$t_stop"))"

# The figures of steps 5 and 6, for tests/faults (rows 3b and 2c): written
# whole (a rename), so the report never reads half a file.
if [ -n "$FIGURES" ]; then
    mkdir -p "$(dirname "$FIGURES")"
    /usr/bin/python3 -c '
import json, os, sys
path, at, limit, fired, stale, back, kills, gave_up, unit_back, peer_back = sys.argv[1:]
figures = {
    "measured_at": at,
    "watchdog_limit_s": float(limit), "watchdog_fired_s": float(fired),
    "stale_route_s": float(stale), "back_s": float(back),
    "kills": int(kills), "gave_up_s": float(gave_up),
    "unit_back_s": float(unit_back), "peer_back_s": float(peer_back),
}
with open(path + ".tmp", "w") as out:
    json.dump(figures, out, indent=1)
    out.write("\n")
os.replace(path + ".tmp", path)
' "$FIGURES" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$limit" "$fired" "$stale" "$back6" \
        "$kills" "$gave_up" "$back" "$again" || fail "cannot write $FIGURES"
    say "6. figures of steps 5 and 6 left in $FIGURES"
fi
in_ct systemctl stop announcer.service || fail "systemctl stop announcer.service"

# ---- 7. a broken announcer.toml fails the start at once (ExecStartPre),
# with the reason in the journal; the unit keeps trying every RestartSec
# and comes up by itself once the file is fixed.
echo 'interval = "often"' >>"$TOML"
if in_ct systemctl start announcer.service 2>/dev/null; then
    fail "announcer.service started with a broken announcer.toml"
fi
# journald stores ExecStartPre's stderr a moment after systemctl returns: look again
# for a few seconds (once it was not there yet, with the line on the console already).
says_why() { in_ct journalctl --no-pager -o cat -u announcer.service | grep -q "announcer.toml: .*interval"; }
wait_for 10 "the journal to say what is wrong with announcer.toml" says_why
say "7. a broken announcer.toml: start refused, result $(prop Result), reason in the journal"
retried() { [ "$(prop NRestarts)" -ge 1 ]; }
wait_for 30 "announcer.service to try again with the broken announcer.toml" retried
state=$(in_ct systemctl is-active announcer.service || true)
[ "$state" != failed ] || fail "the unit gave up: failed"
t1=$(now)
sed -i '$d' "$TOML"
wait_for 30 "announcer.service to come up by itself once announcer.toml is fixed" is_active
say "7. retried while broken ($(prop NRestarts) restarts, state $state), up by itself $(since "$t1")s after the fix"
in_ct systemctl stop announcer.service || fail "systemctl stop announcer.service"

# ---- 8. the process check on another user's unit, under the sandbox
# ($$$$: systemd makes it $$, the shell's own pid; exec keeps that pid for sleep)
in_ct systemd-run --quiet --unit=pkgtest-proxy -p User=nobody -p Restart=always -p RestartSec=200ms \
    -p RuntimeDirectory=pkgtest-proxy -p RuntimeDirectoryPreserve=yes \
    /bin/sh -c 'echo $$$$ >/run/pkgtest-proxy/pid; exec sleep infinity' || fail "systemd-run pkgtest-proxy"
proxy_pid() { in_ct systemctl show -P MainPID pkgtest-proxy.service; }
proxy_restarted() { local pid; pid=$(proxy_pid); [ "$pid" != 0 ] && [ "$pid" != "$1" ]; }
process_toml() { # process_toml GRACE [DRAIN_SECONDS]
    cat >"$TOML" <<EOF
local_as = 65000
allowed_prefixes = ["192.0.2.0/24"]

[defaults]
address_guard = false
interval = 5.0
fast_interval = 5.0
rise = 1
fall = 3
${2:+drain_seconds = $2}

[[service]]
name = "pkgtest"
prefixes = ["$PREFIX"]
checks = [
    { type = "process", unit = "pkgtest-proxy.service", grace = $1 },
    { type = "process", pid_file = "/run/pkgtest-proxy/pid", grace = $1 },
]
EOF
}
journal_has() { in_ct journalctl --no-pager -o cat -u announcer.service | grep "$1" | grep -q "$2"; }
process_toml 0.0
seen=$(lines)
in_ct systemctl start announcer.service || fail "systemctl start announcer.service (process check)"
wait_for 30 "the peer to receive $PREFIX under the process check" has_new
pid=$(proxy_pid)
checked=$(in_ct announcer check pkgtest 2>&1 || true)
alive=$(echo "$checked" | grep -c "process .*: pid $pid alive$" || true)
[ "$alive" = 2 ] || soft_fail "8. both process checks should say 'pid $pid alive': $checked"
say "8. under the sandbox, on nobody's pkgtest-proxy.service:"
echo "$checked" | sed 's/^/    /' >&2
seen=$(lines)
t_kill=$(now)
in_ct kill -KILL "$pid"
withdrawn() { [ -n "$(peer_first "$seen" withdraw)" ]; }
if wait_for_quiet 4 withdrawn; then
    gone=$(awk -v a="$t_kill" -v b="$(peer_first "$seen" withdraw)" 'BEGIN { printf "%.3f", b - a }')
    say "8. SIGKILL of pid $pid: the peer saw the withdraw ${gone}s later (rounds are 5 s apart)"
else
    soft_fail "8. SIGKILL of the unit's main process: no withdraw at the peer within 4 s (no event)"
fi
journal_has "event=check_event" "pid $pid exited" || soft_fail "8. no check_event naming pid $pid"
journal_has "event=route" "cause=event" || soft_fail "8. no route change with cause=event"
written=$(in_ct journalctl --no-pager -o cat -u announcer.service \
    | sed -n 's/.*event=event_written.* delay=\([0-9.e-]*\).*/\1/p' | tail -n 1)
say "8. the journal: check_event, route with cause=event, event_written delay=${written:-?}s"
wait_for 10 "systemd to restart pkgtest-proxy.service" proxy_restarted "$pid"
seen=$(lines)
wait_for 20 "the peer to receive $PREFIX again from the unit's new main process" has_new
say "8. new MainPID $(proxy_pid) followed: announced again"

process_toml 3.0
in_ct systemctl reload announcer.service || fail "systemctl reload announcer.service (grace = 3)"
sleep 1 # the new check's first round opens its pidfd
pid=$(proxy_pid)
seen=$(lines)
events=$(in_ct journalctl --no-pager -o cat -u announcer.service | grep -c "event=check_event" || true)
in_ct kill -KILL "$pid"
wait_for 10 "systemd to restart pkgtest-proxy.service" proxy_restarted "$pid"
sleep 4 # past the grace (3 s)
if [ -n "$(peer_first "$seen" withdraw)" ]; then
    soft_fail "8. with grace = 3 a restart of the unit within it withdrew $PREFIX"
fi
after=$(in_ct journalctl --no-pager -o cat -u announcer.service | grep -c "event=check_event" || true)
[ "$after" = "$events" ] || soft_fail "8. with grace = 3 a restart within it still logged a check_event"
say "8. grace = 3: pid $pid killed, systemd restarted it (new MainPID $(proxy_pid)): no withdraw, no event"

# ---- 9. the forwarding drop-in grants CAP_NET_ADMIN and a writable /proc/sys, and only it
DROPIN=/usr/share/announcer/systemd/forwarding.conf
[ -f "$R$DROPIN" ] || fail "9. the package does not ship $DROPIN"
# caps_of PID: "CapBnd CapEff OPTIONS" of a process in the container, OPTIONS those of
# the mount holding /proc/sys/net (what the controller writes: nspawn mounts /proc/sys
# read-only and /proc/sys/net writable; ProtectKernelTunables=yes makes both read-only)
caps_of() {
    local status
    status=$(in_ct cat "/proc/$1/status")
    printf '%s %s %s\n' "$(echo "$status" | awk '/^CapBnd:/ { print $2 }')" \
        "$(echo "$status" | awk '/^CapEff:/ { print $2 }')" \
        "$(in_ct cat "/proc/$1/mountinfo" | awk '$5 == "/proc/sys" { s = $6 } $5 == "/proc/sys/net" { n = $6 }
            END { print n ? n : (s ? s : "none") }')"
}
has_controller() { controller >/dev/null; }
restart_with() { # restart_with STEP: restart the unit, wait for its controller
    in_ct systemctl daemon-reload
    in_ct systemctl restart announcer.service || fail "$1: systemctl restart announcer.service"
    wait_for 20 "$1: a controller (announcer run) under ExaBGP" has_controller
    ctl=$(controller)
}
# Short drains: each restart's ExecStop drains first (30 s by default).
process_toml 0.0 1
in_ct systemctl reload announcer.service || fail "9. systemctl reload announcer.service"
cp "$R$DROPIN" "$R/etc/systemd/system/announcer.service.d/forwarding.conf"
restart_with "9. with the drop-in"
for pid in $(prop MainPID) "$ctl"; do
    read -r bnd eff sys <<<"$(caps_of "$pid")"
    # 0x1400: CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10)
    [ "$bnd" = 0000000000001400 ] || soft_fail "9. with the drop-in, pid $pid: CapBnd=$bnd, not 0x1400"
    case $sys in ro,* | ro) soft_fail "9. with the drop-in, pid $pid: /proc/sys/net is mounted $sys" ;; esac
    say "9. with the drop-in: pid $pid CapBnd=$bnd CapEff=$eff /proc/sys/net: $sys"
done
read -r _ eff _ <<<"$(caps_of "$ctl")"
((0x$eff & 0x1000)) || soft_fail "9. with the drop-in the controller lacks CAP_NET_ADMIN: CapEff=$eff"
rm "$R/etc/systemd/system/announcer.service.d/forwarding.conf"
restart_with "9. without the drop-in"
read -r bnd eff sys <<<"$(caps_of "$ctl")"
[ "$bnd" = 0000000000000400 ] || soft_fail "9. drop-in removed, the controller keeps CapBnd=$bnd"
if ((0x$eff & 0x1000)); then soft_fail "9. drop-in removed, the controller keeps CAP_NET_ADMIN: CapEff=$eff"; fi
case $sys in ro,* | ro) ;; *) soft_fail "9. drop-in removed, /proc/sys/net is not read-only for the controller: $sys" ;; esac
say "9. drop-in removed: controller $ctl CapBnd=$bnd CapEff=$eff /proc/sys/net: $sys"

in_ct systemctl stop announcer.service || fail "systemctl stop announcer.service"
in_ct systemctl stop pkgtest-proxy.service || true
journal -u announcer.service -p warning
in_ct systemctl stop pkgtest-receiver.service || true

# ---- leave the chroot as it was for the purge
shutdown_ct
rm -rf "$R/etc/systemd/system/announcer.service.d" "$R$T" "$R/etc/announcer"
cp -a "$R$SHIPPED" "$R/etc/announcer"
say "container stopped"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'systemd: FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
