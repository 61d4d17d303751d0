"""Run one ``fba`` command in this fresh interpreter, as the ``fba`` console script does, and print one JSON line
after its output: wall and CPU seconds, peak resident set, exit code.

    python -m benchmarks.command_usage eval --features FILE --streaming on

The peak is this process's own ``VmHWM`` (``/proc/self/status``): ``ru_maxrss`` of a child would start from the
resident size of the parent it was forked from, so a large benchmark driver would inflate it.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident set since it started (its exec), in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str]) -> dict:
    """``fba argv`` run in this process, with its imports: what a user's command costs."""
    start = time.perf_counter()
    from fba.cli import main as fba_main

    code = fba_main(argv)
    return {"exit": int(code or 0), "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds(),
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str]) -> int:
    usage = measure(argv)
    print(json.dumps(usage), flush=True)
    return usage["exit"]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
