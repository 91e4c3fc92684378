#!/bin/bash
# Who may connect (DESIGN §4 "Security"). Doors planted where a doorway
# client looks, that it must ignore (the connection then goes over TCP and
# works, and the squatter receives nothing): a door socket owned by another
# uid; a door served by another uid; a symlink to a live door; a regular
# file and a FIFO; a door directory that is a symlink, group/world-writable,
# or owned by another uid. A control case (a squatter in a trusted
# directory) shows that the squatter would get the Hello otherwise.
# Listeners: the door directory is created 0700; a symlinked directory or a
# symlink at the door's path are never followed. Another uid can neither
# knock on a door nor open an accelerated connection's memfd through /proc.
source "$(dirname "$0")/../programs/lib.sh" "$1"
squat="$(realpath "$2")"
victim="$(realpath "$3")"
base="$(mktemp -d /tmp/dw-squat.XXXXXX)"  # short paths: sun_path holds 108 bytes
chmod 755 "$base"
trap 'cleanup; rm -rf "$base"' EXIT
other=0
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
  other=1
fi
# Another uid cannot read the runfiles (under root's home): a copy.
cp "$squat" "$base/squat.py"
chmod 644 "$base/squat.py"
as_nobody() {
  (cd "$base" && setpriv --reuid=nobody --regid=nogroup --clear-groups env PATH=/usr/bin:/bin "$@")
}

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s"
}

P="$(free_port)"
python3 "$squat" echo "$P" >"$WORK/echo.out" 2>&1 &
PIDS+=($!)
wait_port "$P"
NAME="tcp4-127.0.0.1-$P"

squatter() {  # name path [prefix...]: a live door at path
  local name="$1" path="$2"
  shift 2
  "$@" python3 "$base/squat.py" door "$path" 30 >"$WORK/$name.squat" 2>&1 &
  PIDS+=($!)
  wait_for "$WORK/$name.squat" ready 10
}

# The client in door directory $2 must go over TCP, and the squatter (if
# any) must not even be knocked on (or, for $3 = may-knock, get no data).
over_tcp() {  # name dir [may-knock]
  DOORWAY_DIR="$2" under_doorway "$1" timeout 20 python3 "$squat" client "$P" >"$WORK/$1.out" 2>&1 ||
    fail "$1: client failed: $(cat "$WORK/$1.out")"
  grep -q '^ok' "$WORK/$1.out" || fail "$1: $(cat "$WORK/$1.out")"
  expect_log "$1" "new socket"
  expect_no_log "$1" "accelerated connection"
  if [ -f "$WORK/$1.squat" ]; then
    sleep 0.3
    ! grep -q SQUAT-GOT "$WORK/$1.squat" || fail "$1: the squatter got $(grep SQUAT-GOT "$WORK/$1.squat")"
    [ "${3:-}" = may-knock ] || ! grep -q SQUAT-ACCEPTED "$WORK/$1.squat" ||
      fail "$1: the client knocked on the squatter's door"
  fi
  echo "ok: $1: over TCP, squatter got nothing"
}

newdir() { mktemp -d "$base/d.XXXX"; }

# Control: a squatter in a trusted directory gets the Hello and the memfd.
d="$(newdir)"
squatter control "$d/$NAME"
DOORWAY_DIR="$d" under_doorway control timeout 20 python3 "$squat" client "$P" >"$WORK/control.out" 2>&1 || true
wait_for "$WORK/control.squat" SQUAT-GOT 5
echo "ok: control: a trusted door's squatter got $(grep SQUAT-GOT "$WORK/control.squat")"

# A door socket owned by another uid.
if [ "$other" = 1 ]; then
  d="$(newdir)"
  squatter door-owner "$d/$NAME"
  chown nobody "$d/$NAME"
  over_tcp door-owner "$d"

  # A door served by another uid whose socket file was moved into our
  # directory and given to us: only SO_PEERCRED can tell.
  od="$(mktemp -d "$base/o.XXXX")"
  chown nobody "$od"
  squatter door-peer "$od/door" as_nobody
  d="$(newdir)"
  mv "$od/door" "$d/$NAME"
  chown root "$d/$NAME"
  over_tcp door-peer "$d" may-knock

  # A directory owned by another uid, with a live door in it.
  d="$(newdir)"
  squatter dir-owner "$d/$NAME"
  chown nobody "$d"
  over_tcp dir-owner "$d"
else
  echo "skip: other-uid cases (need root, user nobody and setpriv)"
fi

# A symlink to a live door.
e="$(newdir)"
squatter door-symlink "$e/door"
d="$(newdir)"
ln -s "$e/door" "$d/$NAME"
over_tcp door-symlink "$d"

# A regular file, a FIFO.
d="$(newdir)"
echo x >"$d/$NAME"
over_tcp door-file "$d"
d="$(newdir)"
mkfifo "$d/$NAME"
over_tcp door-fifo "$d"

# The directory a symlink to a directory with a live door.
e="$(newdir)"
squatter dir-symlink "$e/$NAME"
ln -s "$e" "$base/link"
over_tcp dir-symlink "$base/link"

# World- and group-writable directories with a live door.
for mode in 777 770 1777; do
  d="$(newdir)"
  squatter "dir-$mode" "$d/$NAME"
  chmod "$mode" "$d"
  over_tcp "dir-$mode" "$d"
done

# ---- listeners
# The runtime creates a missing door directory 0700.
lp="$(free_port)"
dd="$base/created"
DOORWAY_DIR="$dd" spawn created "$WORK/created.out" python3 "$victim" select "$lp"
wait_for "$WORK/created.out" listening 10
[ "$(stat -c %a "$dd")" = 700 ] || fail "door directory created with mode $(stat -c %a "$dd")"
[ -S "$dd/tcp4-127.0.0.1-$lp" ] || fail "no door in $dd"
DOORWAY_DIR="$dd" under_doorway created-client python3 "$squat" hold "$lp" >"$WORK/hold.out" 2>&1 &
PIDS+=($!)
hold=$!
wait_for "$WORK/hold.out" held 10
expect_log created-client "accelerated connection"
# Stats files (runtime/stats.h) live beside the doors: 0600 at most.
for f in "$dd"/*; do
  [ -S "$f" ] && continue
  [ $((0$(stat -c %a "$f") & 077)) = 0 ] || fail "$f has mode $(stat -c %a "$f")"
done
echo "ok: door directory created 0700, door $(stat -c %A "$dd/tcp4-127.0.0.1-$lp")," \
  "$(find "$dd" -type f | wc -l) stats files, none readable by others"

# Another uid can reach neither the door nor the connection's memfd.
if [ "$other" = 1 ]; then
  spid="$(pgrep -f "victim.py select $lp" | head -1)"
  grep -q memfd:doorway "/proc/$spid/maps" || fail "the server has no segment mapped"
  as_nobody python3 "$base/squat.py" probe "$spid" "$dd/tcp4-127.0.0.1-$lp" >"$WORK/probe.out" 2>&1
  grep -q "REACHED nothing" "$WORK/probe.out" || fail "another uid reached: $(cat "$WORK/probe.out")"
  echo "ok: another uid: $(tr '\n' ' ' <"$WORK/probe.out")"
fi
kill "$hold" 2>/dev/null || true

# A door directory that is a symlink (to a directory of ours): no door.
lp="$(free_port)"
t="$(newdir)"
ln -s "$t" "$base/ldir"
DOORWAY_DIR="$base/ldir" spawn ldir "$WORK/ldir.out" python3 "$victim" select "$lp"
wait_for "$WORK/ldir.out" listening 10
[ -z "$(ls -A "$t")" ] || fail "a door was created through a symlinked directory: $(ls -A "$t")"
DOORWAY_DIR="$base/ldir" under_doorway ldir-client python3 "$squat" client "$lp" >/dev/null ||
  fail "ldir: client failed"
expect_no_log ldir-client "accelerated connection"
echo "ok: symlinked door directory not used"

# A symlink planted at the door's path: not followed, not replaced.
lp="$(free_port)"
d="$(newdir)"
ln -s "$base/target" "$d/tcp4-127.0.0.1-$lp"
DOORWAY_DIR="$d" spawn lsym "$WORK/lsym.out" python3 "$victim" select "$lp"
wait_for "$WORK/lsym.out" listening 10
[ -L "$d/tcp4-127.0.0.1-$lp" ] || fail "the planted symlink was replaced"
[ ! -e "$base/target" ] || fail "the symlink's target was created"
DOORWAY_DIR="$d" under_doorway lsym-client python3 "$squat" client "$lp" >/dev/null ||
  fail "lsym: client failed"
expect_no_log lsym-client "accelerated connection"
echo "ok: symlink at the door path not followed"
echo "PASS: door squatting"
