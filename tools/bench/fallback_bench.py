"""The fallback path measured: kernel TCP that doorway does not accelerate.

Three modes side by side, alternated within one run, REPS times each:
  native       the program without doorway
  passthrough  under doorway, DOORWAY_FALLBACK=passthrough (direct libc calls)
  uring        under doorway, DOORWAY_FALLBACK=uring (the io_uring engine)
  uring-sqpoll under doorway, DOORWAY_FALLBACK=uring-sqpoll (SQPOLL rings)
over two paths:
  loopback     127.0.0.1; the two sides get different DOORWAY_DIRs so that
               the client finds no door and the connection stays kernel TCP
  veth         two network namespaces joined by a veth pair (10.213.8.1 and
               10.213.8.2 inside them), made and removed by this script; root
               only, skipped otherwise
and three workloads:
  64 B ping-pong RTT      //tools/bench:fallback_io pingpong
  64 KiB write() stream   //tools/bench:fallback_io stream
  redis-benchmark         against a redis-server that is not under doorway
                          (only redis-benchmark runs under the mode)
plus the per-call cost of write()+read() on a socketpair in one thread
(//tools/bench:pingpong calls), which isolates the engine's overhead.

The server side is pinned to CPU 1 and the client side to CPU 0 (taskset).
Not a test: it asserts nothing. Prints a Markdown report (and writes it to
--out).

  bazel run -c opt //tools/bench:fallback_bench -- [--reps N] [--out FILE]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tools.bench.benchlib import cpu_model, runfile

MODES = ["native", "passthrough", "uring", "uring-sqpoll"]
VETH_SERVER = "10.213.8.2"
VETH_CLIENT = "10.213.8.1"



class Ctx:
    def __init__(self, so, tmp):
        self.so = so
        self.tmp = tmp
        self.port = 17000 + os.getpid() % 20000

    def next_port(self):
        self.port += 1
        return self.port

    def env_vars(self, mode, side):
        """Environment for one side of a connection (as NAME=VALUE strings)."""
        if mode == "native":
            return []
        return [
            f"LD_PRELOAD={self.so}",
            f"DOORWAY_FALLBACK={mode}",
            # Separate door directories: the client never finds the server's
            # door, so the connection is kernel TCP under doorway.
            f"DOORWAY_DIR={self.tmp}/doors-{side}",
        ]


def command(ns, cpu, env_vars, argv):
    """argv run on `cpu`, inside network namespace `ns` (or not), with env_vars.
    `ip` and the driver itself never run under the preload."""
    cmd = ["taskset", "-c", str(cpu)] + argv
    if env_vars:
        cmd = ["env"] + env_vars + cmd
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return cmd


def clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k == "LD_PRELOAD" or k.startswith("DOORWAY_"):
            env.pop(k)
    return env


def fields(text):
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split())}


def io_run(ctx, tool, path, mode, argv_client):
    srv_ns, cli_ns, addr = (path["server_ns"], path["client_ns"], path["server_addr"])
    for _ in range(20):  # bounded: a port someone else holds -> the next one
        port = ctx.next_port()
        srv = subprocess.Popen(
            command(srv_ns, 1, ctx.env_vars(mode, "server"), [tool, "server", addr, str(port)]),
            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if srv.stdout.readline().strip() == "listening":
            break
        srv.wait(timeout=30)
    else:
        sys.exit("server did not start")
    try:
        out = subprocess.run(
            command(cli_ns, 0, ctx.env_vars(mode, "client"),
                    [tool] + [argv_client[0], addr, str(port)] + argv_client[1:]),
            env=clean_env(), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            sys.exit(f"client failed ({mode}, {path['name']}): {out.stderr}")
        return fields(out.stdout)
    finally:
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def redis_run(ctx, path, mode, requests):
    port = ctx.next_port()
    srv_ns, cli_ns, addr = (path["server_ns"], path["client_ns"], path["server_addr"])
    srv = subprocess.Popen(
        command(srv_ns, 1, [], ["redis-server", "--port", str(port), "--bind", addr, "--save", "",
                                "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                                "--logfile", "", "--loglevel", "warning"]),
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ping = command(cli_ns, 0, [], ["redis-cli", "-h", addr, "-p", str(port), "ping"])
        for _ in range(200):  # bounded: 10 s
            r = subprocess.run(ping, env=clean_env(), capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        else:
            sys.exit("redis-server did not start")
        out = subprocess.run(
            command(cli_ns, 0, ctx.env_vars(mode, "client"),
                    ["redis-benchmark", "-h", addr, "-p", str(port), "-n", str(requests), "-c", "10",
                     "-t", "ping_mbulk,set,get", "--csv"]),
            env=clean_env(), capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(f"redis-benchmark failed ({mode}): {out.stderr}")
        rps = {}
        for line in out.stdout.splitlines():
            cols = [c.strip('"') for c in line.split(",")]
            if len(cols) >= 2 and cols[0] != "test":
                rps[cols[0]] = float(cols[1])
        return rps
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def calls_run(ctx, pingpong, mode, iters):
    out = subprocess.run(
        command(None, 0, ctx.env_vars(mode, "client"), [pingpong, "calls", "64", str(iters)]),
        env=clean_env(), capture_output=True, text=True, timeout=300, check=True)
    return fields(out.stdout)["pair_ns"]


def sh(cmd):
    return subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def make_veth():
    """Two namespaces and a veth pair; returns (ns_a, ns_b) or None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    pid = os.getpid()
    a, b = f"dwbench-a-{pid}", f"dwbench-b-{pid}"
    va, vb = f"dwba{pid}", f"dwbb{pid}"
    ok = (sh(f"ip netns add {a}") and sh(f"ip netns add {b}")
          and sh(f"ip link add {va} netns {a} type veth peer name {vb} netns {b}")
          and sh(f"ip -n {a} addr add {VETH_CLIENT}/24 dev {va}")
          and sh(f"ip -n {b} addr add {VETH_SERVER}/24 dev {vb}")
          and sh(f"ip -n {a} link set {va} up") and sh(f"ip -n {b} link set {vb} up")
          and sh(f"ip -n {a} link set lo up") and sh(f"ip -n {b} link set lo up"))
    if not ok:
        drop_veth((a, b))
        return None
    return a, b


def drop_veth(ns):
    for n in ns:
        sh(f"ip netns del {n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--redis-requests", type=int, default=100000)
    ap.add_argument("--redis-reps", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    tool = runfile("tools/bench/fallback_io")
    pingpong = runfile("tools/bench/pingpong")
    so = runfile("abi/libdoorway.so")
    have_redis = shutil.which("redis-server") and shutil.which("redis-benchmark")
    tmp = tempfile.mkdtemp(prefix="dwbench-")
    ctx = Ctx(so, tmp)
    paths = [{"name": "loopback", "server_ns": None, "client_ns": None,
              "server_addr": "127.0.0.1"}]
    veth = make_veth()
    if veth:
        paths.append({"name": "veth", "server_ns": veth[1], "client_ns": veth[0],
                      "server_addr": VETH_SERVER})
    res = {}  # (path, workload, metric) -> mode -> [values]
    load0 = os.getloadavg()

    def add(path, workload, metric, mode, value):
        res.setdefault((path, workload, metric), {m: [] for m in MODES})[mode].append(value)

    try:
        for rep in range(args.reps):
            order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
            for path in paths:
                for mode in order:
                    r = io_run(ctx, tool, path, mode, ["pingpong", "64", str(args.iters)])
                    add(path["name"], "64 B ping-pong", "RTT p50 (µs)", mode, r["p50_ns"] / 1000)
                    add(path["name"], "64 B ping-pong", "RTT mean (µs)", mode, r["mean_ns"] / 1000)
                    add(path["name"], "64 B ping-pong", "RTT p99 (µs)", mode, r["p99_ns"] / 1000)
                    r = io_run(ctx, tool, path, mode, ["stream", "65536", str(args.mib)])
                    add(path["name"], "64 KiB stream", "MiB/s", mode, r["mib_s"])
                    print(f"rep {rep} {path['name']:8s} {mode:11s} done", file=sys.stderr)
            for mode in order:
                add("socketpair", "write+read 64 B, one thread", "ns per pair", mode,
                    calls_run(ctx, pingpong, mode, 50000))
        if have_redis:
            for rep in range(args.redis_reps):
                order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
                for path in paths:
                    for mode in order:
                        for test, rps in redis_run(ctx, path, mode, args.redis_requests).items():
                            add(path["name"], "redis-benchmark -c 10", f"{test} req/s", mode, rps)
                        print(f"redis rep {rep} {path['name']:8s} {mode:11s} done",
                              file=sys.stderr)
    finally:
        if veth:
            drop_veth(veth)
        shutil.rmtree(tmp, ignore_errors=True)

    cpu = cpu_model()
    load = os.getloadavg()
    lines = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{cpu}, {os.cpu_count()} CPUs, Linux {os.uname().release}; "
        f"load average at start {load0[0]:.2f}, at end {load[0]:.2f}. "
        "Server side on CPU 1, client side on CPU 0 (taskset). "
        f"{args.reps} runs per mode ({args.redis_reps} for redis), modes alternated. "
        "Columns: medians per mode; the ratio of medians to native's; and the ratio "
        "of the best runs (lowest time, highest rate), which other load on the machine "
        "disturbs least. For times lower is better, for rates higher is better.",
        "",
        "| path | workload | metric | " + " | ".join(MODES) + " | "
        + " | ".join(f"{m}/native" for m in MODES[1:]) + " | "
        + " | ".join(f"best: {m}/native" for m in MODES[1:]) + " |",
        "|" + " --- |" * (3 + len(MODES) + 2 * (len(MODES) - 1)),
    ]
    for (path, workload, metric), by_mode in res.items():
        if any(not by_mode[m] for m in MODES):
            continue
        med = {m: statistics.median(v) for m, v in by_mode.items()}
        rate = "/s" in metric
        best = {m: (max(v) if rate else min(v)) for m, v in by_mode.items()}
        cells = [path, workload, metric] + [f"{med[m]:.2f}" for m in MODES]
        cells += [f"{med[m] / med['native']:.3f}" for m in MODES[1:]]
        cells += [f"{best[m] / best['native']:.3f}" for m in MODES[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    if not veth:
        lines += ["", "veth pair: skipped (needs root and iproute2)."]
    if not have_redis:
        lines += ["", "redis-benchmark: skipped (redis-server/redis-tools not installed)."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
