"""Compatibility module: the comparison behind scripts/compare.py lives in the package `ultra_vil.study`.

This module re-exports the names code used to import from here, and keeps the job entry that a study started
with an older ultra-vil still launches: `python -m ultra_vil.yolo.compare --worker JOB.json` runs the job as
`python -m ultra_vil.study.worker --worker JOB.json` does. New code imports from `ultra_vil.study`.
"""

from __future__ import annotations

import sys

from ultra_vil.study.costs import (  # noqa: F401
    COST_KINDS,
    COSTS_FILE,
    cost_lines,
    cost_ratio,
    cost_settings,
    measure_study_costs,
    read_costs,
)
from ultra_vil.study.locks import LOCK_MARK, RunLock, claim  # noqa: F401
from ultra_vil.study.models import (  # noqa: F401
    GENERATION,
    REPO,
    backbone_weights,
    baseline_cfg,
    baseline_tag,
    file_sha,
    find_file,
    model_sha,
    pick_models,
    scaled_model,
)
from ultra_vil.study.protocol import (  # noqa: F401
    RUN_SETTINGS,
    check_settings,
    parse_extra,
    read_protocol,
    repo_root,
    stored_file,
    stored_path,
)
from ultra_vil.study.report import (  # noqa: F401
    CHECKPOINT_GAP,
    TABLE,
    cell,
    checkpoint_gaps,
    data_names,
    fmt,
    mean_std,
    read_row,
    verdict_lines,
    write_csv,
    write_md,
    write_png,
)
from ultra_vil.study.runner import preflight, run  # noqa: F401
from ultra_vil.study.stats import (  # noqa: F401
    COLUMNS,
    CONFIDENCE,
    COST_COLUMNS,
    DECIDING_METRIC,
    DIFF_METRICS,
    METRICS,
    NA,
    Comparison,
    Interval,
    compare_pair,
    compare_rows,
    paired,
    paired_interval,
    pairs_of,
    read_rows,
    t_quantile_975,
    verdict,
)
from ultra_vil.study.worker import (  # noqa: F401
    die_with_parent,
    onnx_latency,
    register_vil,
    resolve_device,
    run_worker,
    time_ms,
    worker,
    worker_main,
)

if __name__ == "__main__":  # a job process of an older study: python -m ultra_vil.yolo.compare --worker JOB.json
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit("usage: python -m ultra_vil.yolo.compare --worker JOB.json (started by scripts/compare.py)")
    sys.exit(worker_main(sys.argv[2]))
