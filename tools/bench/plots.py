"""Plots for docs/benchmarks.md, from the JSON that report.py writes:

  python3 plots.py DATA.json OUT_DIR

Run by report.py with an interpreter that has Debian's python3-matplotlib.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "tcp": ("kernel TCP", "tab:red", "o"),
    "unix": ("Unix socket", "tab:orange", "s"),
    "doorway": ("doorway", "tab:blue", "^"),
    "floor": ("floor", "black", "x"),
}


def size_label(n):
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1 << 10:
        return f"{n >> 10} KiB"
    return f"{n} B"


def series(ax, rows, t):
    """rows: [[size, sorted values...], ...]; draws the medians with min-max bars."""
    xs, med, lo, hi = [], [], [], []
    for row in rows:
        size, vals = row[0], row[1:]
        if not vals:
            continue
        m = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] +
                                                          vals[len(vals) // 2]) / 2
        xs.append(size)
        med.append(m)
        lo.append(m - vals[0])
        hi.append(vals[-1] - m)
    if not xs:
        return
    label, color, marker = STYLE[t]
    ax.errorbar(xs, med, yerr=[lo, hi], label=label, color=color, marker=marker, capsize=3,
                linestyle="--" if t == "floor" else "-")


def size_axis(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([size_label(s) for s in sizes], rotation=0)
    ax.minorticks_off()


def main():
    data_path, out = sys.argv[1], sys.argv[2]
    with open(data_path) as f:
        d = json.load(f)
    note = " (QUICK MODE: not meaningful)" if d.get("quick") else ""

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in ("tcp", "unix", "doorway", "floor"):
        series(ax, d["rtt"][t], t)
    size_axis(ax, [row[0] for row in d["rtt"]["tcp"]])
    ax.set_yscale("log")
    ax.set_xlabel("message size (one write, echoed back)")
    ax.set_ylabel("round-trip time p50 (µs, log scale)")
    ax.set_title("Ping-pong RTT against message size" + note)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "benchmarks-latency.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in ("tcp", "unix", "doorway", "floor"):
        series(ax, d["stream"][t], t)
    size_axis(ax, [row[0] for row in d["stream"]["tcp"]])
    ax.set_yscale("log")
    ax.set_xlabel("write size")
    ax.set_ylabel("throughput (GB/s, log scale)")
    ax.set_title("Streaming throughput against write size" + note)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="floor = one core's memcpy", loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "benchmarks-throughput.png"), dpi=100)
    plt.close(fig)

    s = d.get("spin")
    if s:
        fixed = [i for i, b in enumerate(s["budgets"]) if b is not None]
        xs = [max(s["budgets"][i], 100) / 1000 for i in fixed]  # 0 drawn at 0.1 µs
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        a1.plot(xs, [s["rtt_p50"][i] for i in fixed], "o-", label="RTT p50 (µs)")
        a1.plot(xs, [s["cpu_rt"][i] for i in fixed], "s-", label="CPU per round trip (µs)")
        a1.set_title("back-to-back 64 B ping-pong")
        a2.plot(xs, [s["paced_p50"][i] for i in fixed], "o-", label="RTT p50 (µs)")
        a2.plot(xs, [s["paced_cpu"][i] for i in fixed], "s-", label="server CPU per request (µs)")
        a2.set_title("64 B requests 100 µs apart")
        if None in s["budgets"]:
            d = s["budgets"].index(None)
            for a, rtt, cpu in ((a1, s["rtt_p50"][d], s["cpu_rt"][d]),
                                (a2, s["paced_p50"][d], s["paced_cpu"][d])):
                a.axhline(rtt, color="tab:blue", linestyle=":", label="adaptive default: RTT")
                a.axhline(cpu, color="tab:orange", linestyle=":", label="adaptive default: CPU")
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("fixed spin budget (µs; 0 drawn at 0.1)")
            a.grid(True, which="both", alpha=0.3)
            a.legend()
        fig.suptitle("doorway: spin budget" + note)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "benchmarks-spin.png"), dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
