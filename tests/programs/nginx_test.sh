#!/bin/bash
# nginx (master + 2 pre-forked workers sharing one accelerated listener,
# epoll with EPOLLEXCLUSIVE, sendfile) serving a file to curl, all under
# doorway: every fetch accelerated and byte for byte.
source "$(dirname "$0")/lib.sh" "$1"
command -v nginx >/dev/null || fail "nginx not installed (tools/setup.sh installs it)"
port="$(free_port)"
mkdir -p "$WORK/www" "$WORK/logs"
head -c $((20 * 1024 * 1024 + 3)) /dev/urandom >"$WORK/www/big.bin"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
user root;
master_process on;
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server {
    listen 127.0.0.1:$port;
    root $WORK/www;
  }
}
CONF
spawn server "$WORK/server.out" nginx -p "$WORK" -c "$WORK/nginx.conf"
wait_port "$port"
want="$(sha "$WORK/www/big.bin")"
for i in 1 2 3 4; do
  under_doorway "client$i" curl -sS --max-time 60 -o "$WORK/got$i.bin" \
    "http://127.0.0.1:$port/big.bin" || fail "curl $i exited $?"
  [ "$(sha "$WORK/got$i.bin")" = "$want" ] || fail "fetch $i: bytes differ"
  expect_log "client$i" "accelerated connection to port $port"
done
under_doorway missing curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/nope" \
  >"$WORK/code" || fail "curl on a missing file"
[ "$(cat "$WORK/code")" = 404 ] || fail "missing file gave $(cat "$WORK/code")"
expect_log server "accelerated connection accepted"
if grep -q "\[emerg\]\|\[crit\]" "$WORK/logs/error.log"; then
  fail "nginx errors: $(grep -E 'emerg|crit' "$WORK/logs/error.log" | head -3)"
fi
echo "PASS: nginx (2 workers) served 4 x 20 MiB over doorway shared memory"
