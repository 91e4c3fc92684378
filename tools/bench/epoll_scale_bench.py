"""epoll_wait cost against the number of idle registered connections.

Runs //tools/bench:epoll_scale (an epoll server, a client with IDLE idle
connections plus one ping-pong connection) over kernel TCP and under
doorway, alternating, for each IDLE count, in one run. Server pinned to CPU
1, client to CPU 0 (taskset). Prints a markdown table: set-up time of all
connections into the server's epoll set, round-trip median and mean on the
active connection, and the server's CPU time per round trip.

  bazel run -c opt //tools/bench:epoll_scale_bench -- [--idle 1,100,1000,8000] [--iters N] [--reps N] [--setup-rt]

--setup-rt: each new connection makes one round trip before the next
connect (the server's epoll_wait then runs once per connection, with all
the earlier ones registered); without it the client connects them all
back to back and the server accepts them in batches.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tools.bench.benchlib import cpu_model, free_port, runfile


def run_pair(prog, so, doors, doorway, idle, iters, setup_rt):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["DOORWAY_DIR"] = doors
    if doorway:
        env["LD_PRELOAD"] = so
    port = free_port()
    srv = subprocess.Popen(["taskset", "-c", "1", prog, "server", str(port)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = srv.stdout.readline()
        if "listening" not in line:
            sys.exit(f"server did not start: {line}")
        cli = subprocess.run(["taskset", "-c", "0", prog, "client", str(port), str(idle),
                              str(iters)] + (["rt"] if setup_rt else []), env=env, capture_output=True,
                             text=True, timeout=600)
        if cli.returncode != 0:
            sys.exit(f"client failed: {cli.stdout} {cli.stderr}")
        srv.wait(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    return {k: float(v) for k, v in (f.split("=") for f in cli.stdout.split())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", default="1,100,1000,8000")
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--setup-rt", action="store_true")
    ap.add_argument("--so", default="", help="libdoorway.so to preload (default: the built one)")
    args = ap.parse_args()
    prog = runfile("tools/bench/epoll_scale")
    so = args.so or runfile("abi/libdoorway.so")
    doors = tempfile.mkdtemp(prefix="doorway-epoll-bench.", dir="/tmp")
    os.chmod(doors, 0o700)
    load = open("/proc/loadavg").read().split()[:3]
    res = {}
    try:
        for idle in [int(x) for x in args.idle.split(",")]:
            for rep in range(args.reps):
                for doorway in ([False, True] if rep % 2 == 0 else [True, False]):
                    got = run_pair(prog, so, doors, doorway, idle, args.iters, args.setup_rt)
                    res.setdefault((idle, doorway), []).append(got)
                    print(f"idle={idle} {'doorway' if doorway else 'kernel'} rep {rep}: {got}",
                          file=sys.stderr)
    finally:
        shutil.rmtree(doors, ignore_errors=True)
    load_end = open("/proc/loadavg").read().split()[:3]

    def med(idle, doorway, key):
        return statistics.median(r[key] for r in res[(idle, doorway)])

    lines = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, "
        f"{os.cpu_count()} CPUs; load average at start {' '.join(load)}, at end "
        f"{' '.join(load_end)}; server on CPU 1, client on CPU 0 (taskset); "
        f"{args.iters} round trips per run, medians of {args.reps} runs per cell; set-up: "
        + ("each connection makes a round trip before the next connects (--setup-rt)."
           if args.setup_rt else "all connections made back to back."),
        "",
        "| idle connections | set-up of all, kernel TCP (s) | set-up, doorway (s) | "
        "RTT median kernel TCP (µs) | RTT median doorway (µs) | RTT mean kernel / doorway (µs) | "
        "server CPU per round trip kernel / doorway (µs) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for idle in sorted({i for i, _ in res}):
        lines.append(
            f"| {idle} | {med(idle, False, 'setup_s'):.3f} | {med(idle, True, 'setup_s'):.3f} | "
            f"{med(idle, False, 'rtt_median_us'):.2f} | {med(idle, True, 'rtt_median_us'):.2f} | "
            f"{med(idle, False, 'rtt_mean_us'):.2f} / {med(idle, True, 'rtt_mean_us'):.2f} | "
            f"{med(idle, False, 'server_cpu_us_per_rt'):.2f} / "
            f"{med(idle, True, 'server_cpu_us_per_rt'):.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
