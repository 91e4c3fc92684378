"""Accelerated TCP against kernel TCP, the same unmodified binaries.

For each repetition, runs every workload natively (kernel TCP loopback) and
with doorway preloaded on both sides, alternating the order, then reports
min/median/max and the ratio of medians:

  * sockperf ping-pong, TCP, 64 B, paced at SOCKPERF_MPS messages/s
    (sockperf reports one-way latency = RTT/2; its default select() loop)
  * //tools/bench:pingpong 64 B round trips with blocking read/write
  * //tools/bench:pingpong stream: 64 KiB writes for a few seconds
  * //tools/bench:pingpong connector/acceptor: connect+accept+close rate

Server pinned to CPU 1, client to CPU 0 when there are two or more CPUs.

  bazel run -c opt //tools/bench:accel_bench -- [--reps N] [--quick] [--out FILE]
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from tools.bench.benchlib import cpu_model, runfile, free_port




class Runner:
    def __init__(self, so, pin, doors):
        self.so = so
        self.pin = pin
        self.doors = doors

    def env(self, doorway):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env["DOORWAY_DIR"] = self.doors
        if doorway:
            env["LD_PRELOAD"] = self.so
        return env

    def cmd(self, cpu, argv):
        return (["taskset", "-c", str(cpu)] if self.pin else []) + argv

    def pair(self, doorway, server_argv, client_argv, ready=None, timeout=120):
        env = self.env(doorway)
        srv = subprocess.Popen(self.cmd(1, server_argv), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            if ready is None:
                line = srv.stdout.readline()
                assert "listening" in line, line
            else:
                time.sleep(ready)
            cli = subprocess.run(self.cmd(0, client_argv), env=env, capture_output=True,
                                 text=True, timeout=timeout)
            if cli.returncode != 0:
                sys.exit(f"client {client_argv} failed: {cli.stdout} {cli.stderr}")
            return cli.stdout, srv
        except BaseException:
            srv.kill()
            raise


def fields(text):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", text)}


# sockperf sizes its table of observations for the test's duration at an
# assumed top rate; with --mps=max (its default for ping-pong) a transport
# faster than that overflows it ("_seqN > m_maxSequenceNo"). Both transports
# are paced at this rate, which is above kernel TCP's ping-pong rate here
# (~35 k/s) and below the table's limit.
SOCKPERF_MPS = 100000


def sockperf(r, doorway, seconds):
    port = free_port()
    out, srv = r.pair(doorway, ["sockperf", "sr", "--tcp", "-i", "127.0.0.1", "-p", str(port)],
                      ["sockperf", "pp", "--tcp", "-i", "127.0.0.1", "-p", str(port), "-m", "64",
                       "-t", str(seconds), "--mps", str(SOCKPERF_MPS)], ready=0.5)
    srv.kill()
    srv.wait()
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    p50 = float(re.search(r"percentile 50.000 =\s*([0-9.]+)", out).group(1))
    p99 = float(re.search(r"percentile 99.000 =\s*([0-9.]+)", out).group(1))
    avg = float(re.search(r"avg-latency=([0-9.]+)", out).group(1))
    return {"sockperf p50 (µs, one-way)": p50, "sockperf p99 (µs, one-way)": p99,
            "sockperf avg (µs, one-way)": avg}


def pingpong(r, doorway, pp, iters):
    port = free_port()
    out, srv = r.pair(doorway, [pp, "server", str(port)],
                      [pp, "client", "127.0.0.1", str(port), "64", str(iters)])
    srv.wait(timeout=30)
    f = fields(out)
    return {"pingpong 64 B RTT p50 (µs)": f["p50_ns"] / 1000,
            "pingpong 64 B RTT p99 (µs)": f["p99_ns"] / 1000}


def stream(r, doorway, pp, seconds):
    port = free_port()
    _, srv = r.pair(doorway, [pp, "sink", str(port)],
                    [pp, "stream", "127.0.0.1", str(port), "65536", str(seconds)])
    out, _ = srv.communicate(timeout=60)
    return {"stream 64 KiB writes (GB/s)": fields(out)["gbps"]}


def connrate(r, doorway, pp, n):
    port = free_port()
    out, srv = r.pair(doorway, [pp, "acceptor", str(port), str(n)],
                      [pp, "connector", "127.0.0.1", str(port), str(n)])
    srv.wait(timeout=60)
    return {"connect+accept+close (per s)": fields(out)["per_s"]}


HIGHER_IS_BETTER = {"stream 64 KiB writes (GB/s)", "connect+accept+close (per s)"}
TARGETS = {
    "sockperf p50 (µs, one-way)": "≥ 20× lower",
    "stream 64 KiB writes (GB/s)": "≥ 5×",
    "connect+accept+close (per s)": "≥ 2×",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny runs: checks that it works")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.quick:
        args.reps = 1
    pp = runfile("tools/bench/pingpong")
    so = runfile("abi/libdoorway.so")
    pin = (os.cpu_count() or 1) >= 2
    have_sockperf = shutil.which("sockperf") is not None
    doors = tempfile.mkdtemp(prefix="doorway-bench.", dir="/tmp")
    os.chmod(doors, 0o700)
    r = Runner(so, pin, doors)
    results = {"kernel TCP": {}, "doorway": {}}
    try:
        for rep in range(args.reps):
            order = [False, True] if rep % 2 == 0 else [True, False]
            for doorway in order:
                mode = "doorway" if doorway else "kernel TCP"
                got = {}
                if have_sockperf:
                    got.update(sockperf(r, doorway, 1 if args.quick else 3))
                got.update(pingpong(r, doorway, pp, 2000 if args.quick else 50000))
                got.update(stream(r, doorway, pp, 0.5 if args.quick else 2))
                got.update(connrate(r, doorway, pp, 500 if args.quick else 5000))
                for k, v in got.items():
                    results[mode].setdefault(k, []).append(v)
                print(f"rep {rep} {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()),
                      file=sys.stderr)
    finally:
        shutil.rmtree(doors, ignore_errors=True)

    def cell(vals):
        return f"{min(vals):.2f} / {statistics.median(vals):.2f} / {max(vals):.2f}"

    cpu = cpu_model()
    lines = [
        "# Accelerated TCP vs kernel TCP (same binaries)",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by",
        "`bazel run -c opt //tools/bench:accel_bench -- --out $PWD/docs/accelerated-tcp.md`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {os.uname().release}. "
        + ("Server pinned to CPU 1, client to CPU 0 (taskset)." if pin else "Not pinned."),
        f"{args.reps} repetitions per transport, alternating order, in one run."
        + (" QUICK MODE: numbers are not meaningful." if args.quick else ""),
        "",
        "| metric | kernel TCP min / median / max | doorway min / median / max | doorway vs TCP | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in results["kernel TCP"]:
        a = statistics.median(results["kernel TCP"][k])
        b = statistics.median(results["doorway"][k])
        ratio = b / a if k in HIGHER_IS_BETTER else a / b
        better = "higher" if k in HIGHER_IS_BETTER else "lower"
        lines.append(f"| {k} | {cell(results['kernel TCP'][k])} | {cell(results['doorway'][k])} | "
                     f"{ratio:.1f}× {'better' if ratio >= 1 else 'worse'} ({better} is better) | "
                     f"{TARGETS.get(k, '')} |")
    if not have_sockperf:
        lines.append("\nsockperf not installed: its rows are missing.")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
