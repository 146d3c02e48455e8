"""Compatibility module: the comparison behind scripts/compare.py lives in the package `ultra_vil.study`.

Every name of `ultra_vil.study` can still be imported from here (looked up there on first use), and the job entry
that a study started with an older ultra-vil launches still runs: `python -m ultra_vil.yolo.compare --worker
JOB.json` runs the job as `python -m ultra_vil.study.worker --worker JOB.json` does. New code imports from
`ultra_vil.study`.
"""

from __future__ import annotations

import sys

import ultra_vil.study as _study


def __getattr__(name: str):  # PEP 562: ultra_vil.yolo.compare.X is ultra_vil.study.X
    return getattr(_study, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(_study)))


if __name__ == "__main__":  # a job process of an older study: python -m ultra_vil.yolo.compare --worker JOB.json
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit("usage: python -m ultra_vil.yolo.compare --worker JOB.json (started by scripts/compare.py)")
    sys.exit(_study.worker_main(sys.argv[2]))
