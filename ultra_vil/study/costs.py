"""Side-by-side costs (costs.json): every model of a study timed in one process, rounds interleaved."""

from __future__ import annotations

import json
from pathlib import Path

from ultra_vil.study.stats import Comparison, NA


# ------------------------------------------------------------------------------------------- side-by-side costs
COSTS_FILE = "costs.json"


COST_KINDS = (("train", "fwd+bwd time"), ("train_mem", "fwd+bwd peak memory"), ("torch", "latency PyTorch"),
              ("onnx", "latency ONNX RT"))  # fmt: skip


def cost_settings(settings: dict) -> dict:
    """What costs.json must match to belong to a study: image size, batch, device."""
    return {"img_size": settings["img_size"], "batch_size": settings["batch_size"], "device": settings["device"]}


def read_costs(out: Path, settings: dict) -> tuple[dict | None, str]:
    """(costs.json of `out`, "") when it matches the study's settings, else (None, why not)."""
    path = out / COSTS_FILE
    if not path.is_file():
        return None, ""
    costs = json.loads(path.read_text())
    if costs.get("settings") != cost_settings(settings):
        return None, f"{path.name} is from other settings ({costs.get('settings')}): ignored; delete it to remeasure"
    return costs, ""


def cost_ratio(costs: dict, vil: str, stock: str, kind: str) -> str:
    """'1.23x / 1.20x' (min/min / median/median; memory: one ratio) or n/a."""
    a, b = costs["models"].get(vil, {}), costs["models"].get(stock, {})
    if kind == "train_mem":
        return f"{a['train_mem_mb'] / b['train_mem_mb']:.2f}x" if a.get("train_mem_mb") and b.get("train_mem_mb") \
            else NA  # fmt: skip
    if not (a.get(f"{kind}_min_ms") and b.get(f"{kind}_min_ms")):
        return NA
    return f"{a[f'{kind}_min_ms'] / b[f'{kind}_min_ms']:.2f}x / {a[f'{kind}_median_ms'] / b[f'{kind}_median_ms']:.2f}x"


def cost_lines(comparisons: list[Comparison], costs: dict | None) -> list[str]:
    if not costs:
        return ["", "The per-seed time ratios above come from runs that were each timed alone, under whatever load the "
                "machine had then; `--costs` measures every model side by side in one process (not run here)."]
    lines = ["", f"Cost measured side by side ({costs['how']}), model / stock, min/min / median/median:", ""]
    for c in comparisons:
        parts = [f"{name} {cost_ratio(costs, c.vil, c.stock, kind)}" for kind, name in COST_KINDS]
        lines.append(f"- {c.vil} / {c.stock}: " + "; ".join(parts))
    lines += ["", "Prefer these to the per-seed time ratios: each training run was timed alone, under the load of "
              "its hour, while here every model takes its turn in each round and all share the same noise."]
    return lines


def measure_study_costs(models: list[dict], settings: dict, names: list[str], out: Path, threads: int | None) -> dict:
    """Every model of the study built from its YAML and timed side by side (ultra_vil.yolo.costs): fwd+bwd at the
    study's batch and image size, batch-1 fused inference in PyTorch and ONNX Runtime. Writes out/costs.json."""
    import datetime

    import torch

    from ultra_vil.checkpoints import atomic_write
    from ultra_vil.device import device_name
    from ultra_vil.yolo import costs as C

    if threads:
        torch.set_num_threads(threads)  # as in the training runs (Ultralytics' CPU default)
    device = torch.device(settings["device"])
    s = C.CostSettings(size=settings["img_size"], batch=settings["batch_size"], rounds=10, max_seconds=120.0,
                       latency_rounds=30, onnx=settings["onnx"], amp=device.type == "cuda")  # fmt: skip
    built = C.build({m["tag"]: m["cfg"] for m in models}, nc=max(len(names), 1), device=device)
    res = C.measure_costs(built, s, device)
    per = {}
    for tag in built:  # {kind}_min_ms / {kind}_median_ms, the keys cost_ratio reads
        entry = {"train_mem_mb": round(res["train_mem_mb"][tag], 1), "rounds_train": len(res["train"][tag]["times"]),
                 "rounds_latency": len(res["torch"][tag]["times"])}  # fmt: skip
        for kind in ("train", "torch", "onnx"):
            if tag in res[kind]:
                entry.update({f"{kind}_{stat}_ms": round(res[kind][tag][stat], 3) for stat in ("min", "median")})
        per[tag] = entry
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    how = (f"compare.py --costs, {stamp}, {device_name(device)}, {torch.get_num_threads()} thread(s); one "
           f"process, every model once per round; fwd+bwd of the network at batch {s.batch}, {s.size} px, loss "
           f"excluded, min {s.min_rounds} rounds; batch-1 fused inference, {s.latency_rounds} rounds; ONNX: "
           f"{res['onnx_note']}; memory: torch's CPU allocations (profiler) or CUDA's allocator peak, one fwd+bwd")
    costs = {"settings": cost_settings(settings), "how": how, "models": per}
    atomic_write(out / COSTS_FILE, json.dumps(costs, indent=2))
    return costs
