#!/bin/bash
# //tools:stat against a known transfer: two python processes under doorway
# exchange C2S and S2C bytes over an accelerated connection and keep it open;
# stat (table and --json) must show that connection between those two pids
# with exactly those byte counts, and the per-process totals (the client also
# holds a plain TCP connection to a listener without doorway). The client
# then forks a child that sends FORKED more bytes on the shared connection:
# it is listed on the client side with counters of its own. Then the
# client is killed with SIGKILL: its stats file stays behind, and stat must
# not show it (and removes it). DOORWAY_STATS=off must publish nothing.
source "$(dirname "$0")/lib.sh" "$1"
peer="$2"
STAT="$(realpath "$3")"

C2S=123455   # in 5 sends of 24691 bytes: each fits the 1 MiB ring, so 5 writes
S2C=4321
FORKED=1000  # the server does not read them: they fill the ring

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s: $(cat "$1" 2>/dev/null)"
}

# A listener without doorway, for the client's plain TCP connection.
plain_port="$(free_port)"
env -u LD_PRELOAD python3 -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $plain_port)); s.listen()
print('listening', flush=True)
c, _ = s.accept()
time.sleep(120)" >"$WORK/plain.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/plain.out" listening 10

port="$(free_port)"
spawn server "$WORK/server.out" python3 "$peer" server "$port" "$C2S" "$S2C"
spid=$!
wait_for "$WORK/server.out" listening 10
spawn client "$WORK/client.out" python3 "$peer" client "$port" "$C2S" "$S2C" 5 "$plain_port" "$FORKED"
cpid=$!
wait_for "$WORK/client.out" "^child [0-9]" 10
kpid="$(sed -n 's/^child //p' "$WORK/client.out")"
PIDS+=("$kpid")
wait_for "$WORK/server.out" holding 10
expect_log client "accelerated connection to port $port"

[ -f "$DOORS/stats.$cpid" ] || fail "no stats file for the client: $(ls -A "$DOORS")"
[ -f "$DOORS/stats.$kpid" ] || fail "no stats file for the client's fork child: $(ls -A "$DOORS")"
[ "$(stat -c %a "$DOORS/stats.$cpid")" = 600 ] || fail "stats file mode $(stat -c %a "$DOORS/stats.$cpid")"

"$STAT" --dir="$DOORS" --json >"$WORK/stat.json" || fail "stat --json failed"
python3 - "$WORK/stat.json" "$cpid" "$spid" "$port" "$C2S" "$S2C" "$kpid" "$FORKED" <<'PY' || fail "stat --json: $(cat "$WORK/stat.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
cpid, spid, port, c2s, s2c, kpid, forked = (int(x) for x in sys.argv[2:])
conns = [c for c in doc["connections"] if {e["pid"] for e in c["ends"]} & {cpid, spid}]
assert len(conns) == 1, conns
c = conns[0]
# The fork child shares the client's end and counts what it sent itself.
assert [(e["role"], e["pid"]) for e in c["ends"]] == [("client", cpid), ("client", kpid), ("server", spid)], c["ends"]
child = c["ends"][1]
assert child["shared"] and c["ends"][0]["shared"], c["ends"]
assert child["sent"]["bytes"] == forked and child["sent"]["msgs"] == 1, child
assert child["received"]["bytes"] == 0 and child["fds"], child
ends = {e["role"]: e for e in (c["ends"][0], c["ends"][2])}
assert ends["client"]["pid"] == cpid and ends["server"]["pid"] == spid, ends
assert ends["client"]["command"] == ends["server"]["command"] == "python3", ends
assert c["server"] == f"127.0.0.1:{port}", c["server"]
assert c["client"].startswith("127.0.0.1:"), c["client"]
assert ends["client"]["peer"] == c["server"] and ends["server"]["peer"] == c["client"], ends
# Bytes each way: the rings' totals and both ends' counters agree with
# what the peers sent.
assert c["c2s"]["from_rings"] and c["s2c"]["from_rings"], c
assert c["c2s"]["bytes"] == c2s + forked and c["s2c"]["bytes"] == s2c, c
assert c["c2s"]["fill"] == forked and c["s2c"]["fill"] == 0, c
assert c["c2s"]["capacity"] == c["s2c"]["capacity"] == 1 << 20, c
assert ends["client"]["sent"]["bytes"] == c2s and ends["server"]["received"]["bytes"] == c2s
assert ends["server"]["sent"]["bytes"] == s2c and ends["client"]["received"]["bytes"] == s2c
assert ends["client"]["sent"]["msgs"] == 5 and c["c2s"]["msgs"] == 6, c
assert ends["server"]["sent"]["msgs"] == 1 and c["s2c"]["msgs"] == 1, c
for e in c["ends"]:
    assert e["fds"] and all(fd > 2 for fd in e["fds"]), e
    assert e["pages"] in ("4k", "thp", "huge") and e["age_s"] >= 0, e
procs = {p["pid"]: p for p in doc["processes"]}
assert procs[cpid]["accelerated"] == 1 and procs[spid]["accelerated"] == 1, procs
assert procs[cpid]["sent"]["bytes"] == c2s and procs[cpid]["received"]["bytes"] == s2c, procs
# To the listener without doorway: kernel TCP, to this host.
assert procs[cpid]["plain_tcp"] == 1 and procs[cpid]["plain_tcp_local"] == 1, procs[cpid]
assert procs[spid]["tcp_listen"] == 1 and procs[spid]["plain_tcp"] == 0, procs[spid]
assert procs[kpid]["accelerated"] == 1 and procs[kpid]["sent"]["bytes"] == forked, procs[kpid]
print("json ok")
PY

"$STAT" --dir="$DOORS" >"$WORK/stat.txt" || fail "stat failed"
grep -E "^$cpid/python3\[[0-9,]+\],$kpid/python3\[[0-9,]+\] +$spid/python3\[[0-9,]+\] +127\.0\.0\.1:[0-9]+ +127\.0\.0\.1:$port +$((C2S + FORKED)) +6 +$S2C +1 +1M/1M +$FORKED/0 " \
  "$WORK/stat.txt" >/dev/null || fail "stat table: $(cat "$WORK/stat.txt")"
grep -qE "^$cpid +python3 +1/1 +$C2S +5 +$S2C +1 +1 \(1 local\) +0 " "$WORK/stat.txt" ||
  fail "stat process table: $(cat "$WORK/stat.txt")"

# --watch with a count: one JSON document per refresh, then it stops.
timeout 20 "$STAT" --dir="$DOORS" --json --watch=0.1 --count=3 >"$WORK/watch.json" ||
  fail "stat --watch failed"
[ "$(wc -l <"$WORK/watch.json")" = 3 ] || fail "stat --watch --count=3: $(wc -l <"$WORK/watch.json") lines"
python3 -c "
import json, sys
for line in open(sys.argv[1]): json.loads(line)" "$WORK/watch.json" || fail "stat --watch output is not JSON lines"

# SIGKILL: the client cannot remove its file; stat must not show it.
kill -9 "$cpid"
wait "$cpid" 2>/dev/null || true
[ -f "$DOORS/stats.$cpid" ] || fail "the killed client's stats file is gone: the check below would prove nothing"
"$STAT" --dir="$DOORS" --json >"$WORK/after.json" || fail "stat --json after kill failed"
python3 - "$WORK/after.json" "$cpid" "$spid" "$kpid" <<'PY' || fail "after kill -9: $(cat "$WORK/after.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
cpid, spid, kpid = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# The fork child still holds the connection.
assert [[(e["role"], e["pid"]) for e in c["ends"]] for c in doc["connections"]] == \
    [[("client", kpid), ("server", spid)]], doc["connections"]
assert cpid not in {p["pid"] for p in doc["processes"]}, doc["processes"]
assert spid in {p["pid"] for p in doc["processes"]}, doc["processes"]
assert all(e["pid"] != cpid for c in doc["connections"] for e in c["ends"]), doc["connections"]
print("stale ok")
PY
[ ! -e "$DOORS/stats.$cpid" ] || fail "stat left the stale stats file of $cpid"

# A file from a pid namespace that no process is in any more (a sandbox or
# container that ended, whose processes were killed): stale, removed. Made
# from the server's live file with another pid and namespace.
python3 - "$DOORS/stats.$spid" "$DOORS/stats.4000000" <<'PY' || fail "could not craft a foreign stats file"
import struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
struct.pack_into("<i", data, 24, 4000000)    # ProcessHeader::pid
struct.pack_into("<Q", data, 88, 4242)       # ProcessHeader::pid_namespace: nobody's
open(sys.argv[2], "wb").write(data)
PY
"$STAT" --dir="$DOORS" --json >"$WORK/foreign.json" || fail "stat with a foreign file failed"
grep -q '"pid": 4000000' "$WORK/foreign.json" && fail "a dead namespace's process is shown"
[ ! -e "$DOORS/stats.4000000" ] || fail "the stats file of a dead pid namespace was not removed"

# exec: the next program's runtime drops the file the previous program left
# under the pid (here sh, which never uses a socket, so makes none).
under_doorway execer python3 -c "
import os, socket
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
assert os.path.exists('$DOORS/stats.%d' % os.getpid()), 'no stats file before exec'
os.execv('/bin/sh', ['sh', '-c', 'test ! -e $DOORS/stats.\$\$'])" ||
  fail "after exec the previous program's stats file is still there"

# DOORWAY_STATS=off: nothing published.
under_doorway off env DOORWAY_STATS=off python3 -c "
import os, socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
sys.exit(1 if os.path.exists('$DOORS/stats.%d' % os.getpid()) else 0)" ||
  fail "DOORWAY_STATS=off still created a stats file"
echo "ok"
