"""Helpers shared by the benchmark drivers in tools/bench."""
import os
import re
import socket
import sys


def runfile(rel):
    """Absolute path of a file of the doorway workspace in the runfiles tree
    (under `bazel run`), else relative to the working directory."""
    base = os.environ.get("RUNFILES_DIR") or (os.path.abspath(sys.argv[0]) + ".runfiles")
    here = os.path.dirname(os.path.abspath(__file__))  # <runfiles>/doorway/tools/bench
    for cand in (os.path.join(base, "doorway", rel), os.path.join(os.getcwd(), rel),
                 os.path.join(here, "..", "..", rel)):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    sys.exit(f"cannot find {rel}")


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"
