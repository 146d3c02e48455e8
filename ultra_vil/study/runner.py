"""The study loop: check the settings, claim each (model, seed) in turn, run it in a job process, write the reports."""

from __future__ import annotations

import time
from pathlib import Path

from ultra_vil.errors import UserError
from ultra_vil.study.costs import COSTS_FILE, measure_study_costs, read_costs
from ultra_vil.study.locks import claim
from ultra_vil.study.models import file_sha, find_file, model_shas, pick_models
from ultra_vil.study.protocol import check_settings, parse_extra, stored_path
from ultra_vil.study.report import data_names, fmt, read_row, write_csv, write_md, write_png
from ultra_vil.study.worker import register_vil, resolve_device, run_worker


def run(args, argv: list[str] | None = None) -> int:
    """The whole comparison for parsed scripts/compare.py arguments: train and measure every (model, seed) that
    has no row yet, each in a fresh process, then write compare.csv / .md / .png. Returns 1 if a run failed.

    A rows/*.json that cannot be read as a run's row (cut short, not a mapping, text where a number belongs) is
    named in a warning and trained again. With --report, which trains nothing, it is an error naming the file:
    leaving the run out would change the verdicts without a word in the reports. --report builds no model either
    (preflight is for training; --costs builds them when it measures).
    """
    data, device, settings, out = study_settings(args)
    # Models: the stock baselines first (one per generation in use, at --scale), then the ViL YAMLs at that scale.
    models = pick_models(args.models, args.scale, args.baseline)
    check_settings(out / "settings.json", settings)
    report_only = getattr(args, "report", False)
    if not report_only:
        preflight(data, models, args.scale)
    # Training order: seed by seed (every model at seed 0, then seed 1, ...), so an interrupted study already
    # holds complete pairs. Several compare.py processes may share one --out-dir (CPU cores, GPUs): each run is
    # claimed by a lock file first, and a process skips runs that another live process holds.
    order = [] if report_only else [(m, s) for s in args.seeds for m in models]
    failed: dict[tuple[str, int], str] = {}
    busy: list[str] = []
    for i, (model, seed) in enumerate(order, start=1):
        train_one(args, model, seed, f"[{i}/{len(order)}] {model['tag']} seed {seed}", data, device, settings, out,
                  failed, busy)  # fmt: skip
    runs = [(m, s) for m in models for s in args.seeds]  # the reports' order
    rows, notes, names, missing, threads = collect_rows(runs, failed, out, report_only)
    if getattr(args, "costs", False):  # also with --report: it measures, but trains nothing
        study_costs(models, settings, data, names, out, threads, args.scale, report_only)
    write_csv(out / "compare.csv", rows, names)
    write_md(out / "compare.md", rows, notes, failed, models, settings, names, argv, out)
    write_png(out / "compare.png", rows, [m["tag"] for m in models])
    print(f"wrote {out / 'compare.csv'}, {out / 'compare.md'}, {out / 'compare.png'}", flush=True)
    print((out / "compare.md").read_text().split("\n## ")[0], flush=True)
    if report_only and missing:
        print(f"--report: {len(missing)} of {len(runs)} run(s) have no row yet ({', '.join(missing)}): the reports "
              "hold the others", flush=True)
    lacking = [r for r in busy if r in missing]  # a busy run whose row exists is in the reports
    if lacking:
        print(f"{len(lacking)} run(s) were in other processes ({', '.join(lacking)}): the reports lack them; run "
              "this command again once those finish", flush=True)
    return 1 if failed else 0


def study_settings(args) -> tuple[Path, str, dict, Path]:
    """(data YAML, device, the settings every run shares, out-dir) from the arguments, which are checked here."""
    for flag in ("data", "out_dir"):
        if getattr(args, flag) is None:
            raise UserError(f"--{flag.replace('_', '-')} is required")
    if args.epochs < 1 or args.img_size < 32 or args.batch_size < 1 or args.latency_runs < 1:
        raise UserError("--epochs, --batch-size, --latency-runs must be >= 1 and --img-size >= 32")
    if not args.seeds:
        raise UserError("--seeds: at least one seed is needed")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds repeats a seed: {args.seeds}")
    extra = parse_extra(args.extra)
    device = resolve_device(args.device)
    data = find_file(args.data)
    if not data.is_file():
        raise UserError(f"--data {args.data} not found")
    out = args.out_dir.resolve()
    for sub in ("rows", "logs", "runs", "jobs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    settings = {
        "data": stored_path(data, out), "data_sha": file_sha(data), "scale": args.scale, "epochs": args.epochs,
        "img_size": args.img_size, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr0": args.lr0,
        "device": device, "workers": args.workers, "extra": extra, "latency_runs": args.latency_runs,
        "latency_warmup": args.latency_warmup, "onnx": not args.no_onnx,
    }  # fmt: skip
    return data, device, settings, out


def train_one(args, model: dict, seed: int, label: str, data: Path, device: str, settings: dict, out: Path,
              failed: dict, busy: list) -> None:  # fmt: skip
    """Claim (model, seed), train it in a job process unless its row is done, and say how it went; a failure goes
    into `failed`, a run held by another process into `busy`."""
    row_file = out / "rows" / f"{model['tag']}_seed{seed}.json"
    yaml_sha, *older = model_shas(Path(model["yaml"])) if model["yaml"] else ("stock",)
    held, holder = claim(out / "jobs" / f"{model['tag']}_seed{seed}.lock")  # before looking for the row:
    if held is None:  # another process may finish it in between
        print(f"{label}: running in another process ({holder}), skipped", flush=True)
        busy.append(f"{model['tag']} seed {seed}")
        return
    try:
        if row_file.is_file():
            try:
                saved = read_row(row_file, model["tag"], seed)
            except UserError as e:
                print(f"warning: {e}: treated as missing, training it again", flush=True)
            else:
                if saved.get("yaml_sha") in (yaml_sha, *older):
                    print(f"{label}: done before, skipped ({row_file.relative_to(out)})", flush=True)
                    return
                print(f"{label}: {model['yaml']} (or its backbone weights) changed since its row was written: "
                      "training again", flush=True)  # fmt: skip
        print(f"{label}: training {args.epochs} epoch(s) at imgsz {args.img_size} on {device} ...", flush=True)
        job = {**settings, "data": str(data), "tag": model["tag"], "cfg": model["cfg"],
               "vil": model["yaml"] is not None, "yaml_sha": yaml_sha, "seed": seed, "out_dir": str(out),
               "row_file": str(row_file)}  # fmt: skip
        t0 = time.time()
        ok, why = run_worker(job, out / "jobs" / f"{model['tag']}_seed{seed}.json",
                             out / "logs" / f"{model['tag']}_seed{seed}.log", args.quiet, held)  # fmt: skip
    finally:
        held.release()
    if ok:
        try:
            row = read_row(row_file, model["tag"], seed)["row"]
        except UserError as e:
            ok, why = False, f"its row is unusable: {e}"
    if ok:
        print(f"{label}: finished in {time.time() - t0:.0f} s: mAP50 {fmt(row['map50'])}, mAP50-95 "
              f"{fmt(row['map50_95'])}, train {fmt(row['train_s_per_epoch'])} s/epoch", flush=True)  # fmt: skip
    else:
        failed[(model["tag"], seed)] = why
        print(f"{label}: FAILED: {why}", flush=True)


def collect_rows(runs: list, failed: dict, out: Path, report_only: bool):
    """(rows, notes, class names, missing runs, the runs' thread count) of the finished runs, in report order."""
    rows, notes, names, missing, threads = [], {}, [], [], None
    for model, seed in runs:
        row_file = out / "rows" / f"{model['tag']}_seed{seed}.json"
        if (model["tag"], seed) in failed:
            continue
        if not row_file.is_file():
            missing.append(f"{model['tag']} seed {seed}")
            continue
        try:
            saved = read_row(row_file, model["tag"], seed)
        except UserError as e:
            if report_only:
                raise
            print(f"warning: {e}: left out of the reports", flush=True)  # a run another process holds
            missing.append(f"{model['tag']} seed {seed}")
            continue
        rows.append(saved["row"])
        notes[(model["tag"], seed)] = saved.get("notes", {})
        names = names or saved["names"]
        threads = threads or saved.get("env", {}).get("threads")  # what the runs trained with
    return rows, notes, names, missing, threads


def study_costs(models, settings, data, names, out, threads, scale, report_only) -> None:
    """--costs: measure every model side by side into costs.json, unless it holds them all or another process
    measures right now."""
    costs, why = read_costs(out, settings)
    if why:
        print(why, flush=True)
    elif costs and all(m["tag"] in costs["models"] for m in models):
        print(f"costs: {out / COSTS_FILE} holds every model: not measured again (delete it to remeasure)")
    else:
        held, holder = claim(out / "jobs" / "costs.lock")
        if held is None:
            print(f"costs: being measured in another process ({holder}), skipped", flush=True)
            return
        try:
            if report_only:
                preflight(data, models, scale)
            print(f"costs: every model side by side, {settings['img_size']} px ...", flush=True)
            measure_study_costs(models, settings, names or data_names(data), out, threads)
        finally:
            held.release()


def preflight(data: Path, models: list[dict], scale: str) -> None:
    """Fail in seconds, not after hours: the data set is valid and every model builds at this scale."""
    from ultra_vil.data.yolo_check import check_yolo_dataset

    raw = data.read_text()
    report = check_yolo_dataset(data, decode=False)
    if not report.ok:
        if "download:" in raw and any("not found" in i.message for i in report.issues.errors):
            print(f"note: {data} is not on disk yet; Ultralytics will run its 'download' step", flush=True)
        else:
            print(report.format(20), flush=True)
            raise UserError(f"{data} has errors (above); fix them or run scripts/convert_dataset.py --check")
    elif report.issues.warnings:
        print(f"{data}: {len(report.issues.warnings)} warning(s); see scripts/convert_dataset.py --check {data}")
    if any(m["yaml"] for m in models):
        register_vil(required=True)
    from ultralytics import YOLO

    for m in models:
        try:
            model = YOLO(m["cfg"], verbose=False)
        except Exception as e:
            raise UserError(f"cannot build {m['cfg']}: {type(e).__name__}: {e}") from e
        built = model.model.yaml.get("scale")
        if m["yaml"] and "scales" not in model.model.yaml:
            print(f"warning: {m['yaml']} has no 'scales': it is built at one size whatever --scale says", flush=True)
        elif built != scale:
            raise UserError(f"{m['cfg']} was built at scale {built!r}, not {scale!r}")
