#!/usr/bin/env python3
"""Measure what the ultra-vil start-up hook (`ultra_vil.pth` -> `_ultra_vil_hook`) costs.

Runs fresh interpreters with the hook on and off (ULTRA_VIL_NO_HOOK=1), interleaved round by round so that
machine load affects both alike, and prints medians (and 10th percentiles) of the wall time for:

    python -c pass                               start-up: the hook only installs a finder
    python -c "import ultralytics"               Ultralytics' package import (lazy: no model parser yet)
    python -c "from ultralytics import YOLO"     imports ultralytics.nn.tasks: the hook registers the modules
    python -X importtime -c pass                 self time of the _ultra_vil_hook import alone

Examples:
    python scripts/measure_hook_overhead.py                  # 30 rounds (about 5 minutes on 2 cores)
    python scripts/measure_hook_overhead.py --rounds 10 --csv results/hook_overhead.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "python -c pass": "pass",
    "import ultralytics": "import ultralytics",
    "from ultralytics import YOLO": "from ultralytics import YOLO",
}


def wall(code: str, hook: bool) -> float:
    """Seconds for one fresh `python -c code`, with the start-up hook on or off."""
    env = dict(os.environ)
    env.pop("ULTRA_VIL_NO_HOOK", None)
    if not hook:
        env["ULTRA_VIL_NO_HOOK"] = "1"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def hook_import_us(rounds: int) -> list[int]:
    """Self time (microseconds) of `_ultra_vil_hook` in `python -X importtime -c pass`."""
    times = []
    for _ in range(rounds):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
        m = re.search(r"import time:\s+(\d+) \|\s+\d+ \|\s+_ultra_vil_hook$", err, re.M)
        if m is None:
            raise SystemExit("_ultra_vil_hook is not imported at start-up: run `pip install -e .` first")
        times.append(int(m.group(1)))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved on/off pairs per case")
    parser.add_argument("--csv", type=Path, help="also write every measurement to this CSV file")
    args = parser.parse_args(argv)

    samples = {(case, hook): [] for case in CASES for hook in (True, False)}
    for case, code in CASES.items():
        wall(code, True), wall(code, False)  # warm the file cache
        for r in range(args.rounds):
            for hook in (True, False) if r % 2 == 0 else (False, True):  # alternate the order
                samples[(case, hook)].append(wall(code, hook))
    importtime = hook_import_us(args.rounds)

    print(f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| command | hook off: median (p10) | hook on: median (p10) | difference of medians |")
    print("| --- | ---: | ---: | ---: |")
    for case in CASES:
        off, on = samples[(case, False)], samples[(case, True)]

        def fmt(xs):
            return f"{statistics.median(xs) * 1e3:.1f} ms ({sorted(xs)[len(xs) // 10] * 1e3:.1f})"

        d = statistics.median(on) - statistics.median(off)
        print(f"| `{case}` | {fmt(off)} | {fmt(on)} | {d * 1e3:+.1f} ms ({d / statistics.median(off):+.1%}) |")
    print(f"| `-X importtime`: _ultra_vil_hook self time | | {statistics.median(importtime) / 1e3:.2f} ms | |")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["command", "hook", "seconds"])
            for (case, hook), xs in samples.items():
                w.writerows([case, "on" if hook else "off", f"{x:.6f}"] for x in xs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
