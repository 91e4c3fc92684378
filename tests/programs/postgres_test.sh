#!/bin/bash
# PostgreSQL under doorway: the postmaster accepts over its accelerated
# listener and forks a backend per connection (the connection is then shared
# by two processes until the postmaster closes its copy); pgbench's TPC-B
# transactions from 4 clients, then psql checks that the balances add up,
# i.e. every protocol byte went through. PostgreSQL refuses to run as root,
# so everything runs as the `postgres` user of Debian's package, from
# directories of its own (the runfiles and the test's tmpdir are root's).
source "$(dirname "$0")/lib.sh" "$1"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin/postgres" ] && id postgres >/dev/null 2>&1 ||
  fail "PostgreSQL not installed (tools/setup.sh installs it)"
pg="$(mktemp -d /tmp/doorway-pg.XXXXXX)"
trap 'as_pg "$bin/pg_ctl" -D "$pg/data" -m immediate stop >/dev/null 2>&1 || true; cleanup; rm -rf "$pg"' EXIT
cp "$DOORWAY_SO" "$pg/libdoorway.so"
mkdir -m 700 "$pg/doors"
chown -R postgres "$pg"
chmod 755 "$pg"
as_pg() { runuser -u postgres -- env DOORWAY_DIR="$pg/doors" "$@"; }
pre() {  # name cmd...: under doorway, its stats at exit on stderr
  local name="$1"
  shift
  as_pg LD_PRELOAD="$pg/libdoorway.so" DOORWAY_STATS=exit "$@" 2>"$pg/$name.err"
}
as_pg "$bin/initdb" -D "$pg/data" -A trust -U postgres --no-sync >"$pg/initdb.out" 2>&1 ||
  fail "initdb: $(tail -3 "$pg/initdb.out")"
port="$(free_port)"
as_pg LD_PRELOAD="$pg/libdoorway.so" DOORWAY_STATS=exit "$bin/postgres" -D "$pg/data" \
  -k "$pg" -h 127.0.0.1 -p "$port" -c fsync=off >"$pg/server.out" 2>&1 &
PIDS+=($!)
wait_port "$port"
pre init timeout 120 "$bin/pgbench" -h 127.0.0.1 -p "$port" -i -s 1 postgres >"$pg/init.out" ||
  fail "pgbench -i: $(tail -3 "$pg/init.err")"
pre bench timeout 120 "$bin/pgbench" -h 127.0.0.1 -p "$port" -c 4 -t 250 postgres \
  >"$pg/bench.out" || fail "pgbench: $(tail -3 "$pg/bench.err")"
grep -q "number of transactions actually processed: 1000/1000" "$pg/bench.out" ||
  fail "pgbench: $(grep -E 'processed|failed' "$pg/bench.out")"
sums="$(pre psql timeout 60 "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tA -c \
  "select (select sum(abalance) from pgbench_accounts) = (select sum(delta) from pgbench_history),
          (select count(*) from pgbench_history)")" || fail "psql: $(tail -3 "$pg/psql.err")"
[ "$sums" = "t|1000" ] || fail "balances do not add up: $sums"
# Every client connection was accelerated (pgbench: 4 plus its set-up one).
grep -qE "stats: [1-9][0-9]* accelerated connection.*[1-9][0-9]* connect\(s\)" "$pg/bench.err" ||
  fail "pgbench's connections were not accelerated: $(cat "$pg/bench.err")"
grep -q "stats: 1 accelerated connection" "$pg/psql.err" ||
  fail "psql's connection was not accelerated: $(cat "$pg/psql.err")"
echo "PASS: PostgreSQL over doorway shared memory ($(grep -E '^tps' "$pg/bench.out" | cut -c1-30); $(grep stats: "$pg/bench.err" | cut -c1-120))"
