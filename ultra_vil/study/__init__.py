"""The comparison behind scripts/compare.py: stock YOLO vs ViL models under identical settings, with a verdict.

scripts/compare.py parses the arguments and calls `run`; everything else is here, one concern a file:

    models    the model list: each ViL YAML with the stock model of its generation and scale, content hashes
    stats     paired t-intervals over seeds and the verdicts (pure Python, tested on fixed CSVs)
    protocol  protocol files, --extra, settings.json
    locks     flock-held run locks shared by the processes of one study
    worker    one job per (model, seed) in a fresh process (`python -m ultra_vil.study.worker --worker JOB`):
              train, validate last.pt, time
    costs     every model timed side by side (costs.json)
    report    compare.csv / compare.md / compare.png
    runner    the loop over (model, seed)

Library code raises `ultra_vil.errors.UserError`; only the script exits. Timing and peak memory come from
`ultra_vil.bench` (shared with the benchmark), devices from `ultra_vil.device`. `ultra_vil.yolo.compare` re-exports
these names for older callers and still runs a job (`python -m ultra_vil.yolo.compare --worker JOB`).

Why a paired t-interval, not a bootstrap: each seed trains both models on the same data order and augmentation,
so the per-seed differences remove the seed-to-seed noise both share (on neon-trees two runs of one layout that
differed only in mLSTM numerics scored mAP50 0.483 and 0.415). With the 2-10 seeds a study can afford, a bootstrap
over seeds resamples from at most 10 values: its percentile interval is too narrow (with 5 seeds it covers the
true mean difference markedly less often than 95%), whereas the t-interval is exact when the differences are
normal and widens honestly as seeds get fewer. Verdict: "better" if the whole interval of the mAP50-95 difference
is above 0, "worse" if below, else "no difference detectable with N seeds"; with fewer than 2 paired seeds there
is no interval and nothing is claimed.
"""

from __future__ import annotations

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
from ultra_vil.study.stats import (  # noqa: F401
    COLUMNS,
    CONFIDENCE,
    COST_COLUMNS,
    Comparison,
    DECIDING_METRIC,
    DIFF_METRICS,
    Interval,
    METRICS,
    NA,
    compare_pair,
    compare_rows,
    paired,
    paired_interval,
    pairs_of,
    read_rows,
    t_quantile_975,
    verdict,
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
from ultra_vil.study.locks import (  # noqa: F401
    LOCK_MARK,
    RunLock,
    claim,
)
from ultra_vil.study.costs import (  # noqa: F401
    COSTS_FILE,
    COST_KINDS,
    cost_lines,
    cost_ratio,
    cost_settings,
    measure_study_costs,
    read_costs,
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

# The job process and the loop over runs load on first use: `python -m ultra_vil.study.worker` imports this package
# first, and a package that had imported its worker module already would have Python run that module a second
# time, as __main__ (runpy warns of it). The function `worker` is ultra_vil.study.worker.worker: the package's name
# `worker` is that module.
_LAZY = {
    **dict.fromkeys(("die_with_parent", "onnx_latency", "register_vil", "resolve_device", "run_worker", "time_ms",
                     "worker_main"), "ultra_vil.study.worker"),
    **dict.fromkeys(("preflight", "run"), "ultra_vil.study.runner"),
}  # fmt: skip


def __getattr__(name: str):
    """A name of the worker or runner module, imported on first use (see _LAZY)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
