"""The benchmark's model sections: (b) one YOLO slot's mixer units against a transformer layer, (c) the ViL-T
classifier of this checkout against other implementations in worker processes, (d) stock YOLOv8n against
YOLOv8n-ViL. Every comparison is interleaved (ultra_vil.bench.timing) and reports min and median over rounds."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ultra_vil.bench.memory import peak_mem_mb
from ultra_vil.bench.sizes import Preset, compare
from ultra_vil.bench.report import row
from ultra_vil.bench.timing import ratios
from ultra_vil.bench.workers import Worker
from ultra_vil.errors import ArgumentError

LOGGER = logging.getLogger(__name__)
OURS_SRC = Path(__file__).resolve().parents[2]  # the folder holding this ultra_vil package (a checkout's root)


def transformer_block(dim: int, dropout: float = 0.1) -> nn.Module:
    """The width-matched attention baseline: PyTorch's pre-norm encoder layer, 4 heads, MLP 4x (SDPA inside).

    (B, S, dim) -> (B, S, dim). PyTorch's defaults otherwise (dropout 0.1, ReLU), as the targets table states.
    dropout=0.0 is the fairer opponent: in training, attention dropout keeps SDPA off its fused kernels on CPU
    (an S x S matrix is formed), which flatters any linear-cost mixer at long sequences.
    """
    return nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=dropout, norm_first=True, batch_first=True)


# ------------------------------------------------------------------------------------------------ (b) block
def bench_block(preset: Preset, device) -> list[dict]:
    """(b) ViLBlockPair(dim) and the other mixers' units of the same YOLO slot (one SequencerBlock, two VimBlocks:
    what SequencerC2f / VimC2f hold per ViL pair) vs PyTorch's pre-norm transformer layer, batch 1, tokens at
    stride 16, fwd+bwd."""
    from ultra_vil.sequencer import SequencerBlock
    from ultra_vil.vil import ViLBlockPair
    from ultra_vil.vim import VimBlock

    D = preset.block_dim
    torch.manual_seed(0)
    vil = ViLBlockPair(D).to(device)
    seq = SequencerBlock(D).to(device)
    vim = torch.nn.ModuleList([VimBlock(D), VimBlock(D)]).to(device)
    tr = transformer_block(D).to(device)
    tr0 = transformer_block(D, dropout=0.0).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for size in preset.block_sizes:
        H = W = size // 16
        S = H * W
        x = torch.randn(1, S, D, device=device)  # (1, S, D) tokens of an H x W grid

        def step(fwd):
            def run():
                with amp:
                    out = fwd()
                out.float().sum().backward()

            return run

        fns = {"vil_pair": step(lambda x=x, grid=(H, W): vil(x, grid)),
               "sequencer_block": step(lambda x=x, grid=(H, W): seq(x, grid)),
               "vim_pair": step(lambda x=x, grid=(H, W): vim[1](vim[0](x, grid), grid)),
               "transformer_layer": step(lambda x=x: tr(x)),
               "transformer_layer_p0": step(lambda x=x: tr0(x))}  # fmt: skip
        res = compare(fns, preset, device)
        mems = {name: peak_mem_mb(fn, device) for name, fn in fns.items()}
        for name, r in res.items():
            ratio = ratios(res, name, "transformer_layer")
            rows.append(row("block", name, size, r, mems[name], vs="transformer_layer", ratio=ratio,
                            note=f"S={S} tokens, batch 1, width {D}; memory ratio "
                                 f"{mems[name] / max(mems['transformer_layer'], 1e-9):.2f}"))  # fmt: skip
            LOGGER.info("block %-17s %4d px min %8.2f ms median %8.2f ms %8.1f MiB", name, size, r["min"],
                        r["median"], mems[name])  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------- (c) classifier
def classifier_specs(preset: Preset, baseline_src: Path | None, official_src: Path | None) -> list[tuple]:
    """(name, source folder, factory kind, model arguments) of each classifier contender; a source that is not a
    folder raises ArgumentError naming its flag."""
    size, kw = preset.classifier_img, preset.classifier_kw
    ours_kw = dict(name="vil_t", img_size=size, **kw)
    official_kw = dict(dim=kw.get("dim", 192), depth=kw.get("num_blocks", 24) // 2,
                       patch_size=kw.get("patch_size", 16), input_shape=[3, size, size])  # fmt: skip
    specs = [("ours", OURS_SRC, "ultra_vil", ours_kw)]
    if baseline_src is not None:
        specs.append(("baseline", baseline_src, "ultra_vil", ours_kw))
    if official_src is not None:
        specs.append(("official", official_src, "official", official_kw))
    for name, src, _, _ in specs:
        if not Path(src).is_dir():
            raise ArgumentError(f"--{name}-src {src}: not a directory")
    return specs


def bench_classifier(preset: Preset, device, baseline_src: Path | None, official_src: Path | None) -> list[dict]:
    """(c) ViL-T train step and inference, this checkout vs others, each in a worker; rounds interleaved across them."""
    size, batch = preset.classifier_img, preset.classifier_batch
    specs = classifier_specs(preset, baseline_src, official_src)
    common = dict(batch=batch, img_size=size, device=str(device))
    workers = {}
    try:
        for name, src, kind, model_kw in specs:
            workers[name] = Worker(src, "classifier", name, kind=kind, model_kw=model_kw, **common)
            LOGGER.info("classifier: %s from %s (%d params)", name, workers[name].info["origin"],
                        workers[name].info["params"])  # fmt: skip
        rows = []
        ref = "official" if "official" in workers else "baseline" if "baseline" in workers else ""
        for step in ("train", "infer"):
            res = compare({name: w.fn(step) for name, w in workers.items()}, preset, device)
            for name, r in res.items():
                mem = workers[name].peak_mem_mb(step) if step == "train" else None
                ratio = ratios(res, name, ref) if ref else None
                info = workers[name].info
                rows.append(row("classifier", f"{name}_{step}", size, r, mem, batch / r["min"] * 1e3, vs=ref,
                                ratio=ratio, note=f"batch {batch}, {info['params']:,} params, "
                                                  f"{Path(info['origin']).parent}"))  # fmt: skip
                LOGGER.info("classifier %-9s %s: min %8.1f ms (%6.1f img/s), median %8.1f ms", name, step, r["min"],
                            batch / r["min"] * 1e3, r["median"])  # fmt: skip
        return rows
    finally:
        for w in workers.values():
            w.close()


# ------------------------------------------------------------------------------------------------- (d) yolo
def bench_yolo(preset: Preset, device, vil_cfg: str) -> list[dict]:
    """(d) stock YOLOv8n vs YOLOv8n-ViL: fwd+bwd (network only, loss excluded) and batch-1 fused inference, in
    PyTorch and in ONNX Runtime (ultra_vil.yolo.costs, the one cost measurement of YOLO models)."""
    from ultra_vil.yolo import costs  # imports Ultralytics: only for this section

    size, batch = preset.yolo_size, preset.yolo_batch
    models = costs.build({"yolov8n": "yolov8n.yaml", "yolov8n-vil": vil_cfg}, nc=80, device=device)
    settings = costs.CostSettings(size=size, batch=batch, rounds=preset.rounds, min_rounds=preset.min_rounds,
                                  warmup=preset.warmup, max_seconds=preset.max_seconds,
                                  latency_rounds=preset.latency_rounds, amp=device.type == "cuda")  # fmt: skip
    res = costs.measure_costs(models, settings, device)
    rows, mems = [], res["train_mem_mb"]
    for name, r in res["train"].items():
        rows.append(row("yolo", f"{name}_train", size, r, mems[name], batch / r["min"] * 1e3, vs="yolov8n_train",
                        ratio=ratios(res["train"], name, "yolov8n"),
                        note=f"fwd+bwd, batch {batch}; memory ratio {mems[name] / mems['yolov8n']:.2f}"))  # fmt: skip
    for name, r in res["torch"].items():
        rows.append(row("yolo", f"{name}_torch", size, r, vs="yolov8n_torch",
                        ratio=ratios(res["torch"], name, "yolov8n"),
                        note="batch 1, fused, eval, PyTorch"))  # fmt: skip
    if not res["onnx"]:
        return rows + [row("yolo", "onnx", size, note=res["onnx_note"])]
    for name, r in res["onnx"].items():
        rows.append(row("yolo", f"{name}_onnx", size, r, vs="yolov8n_onnx",
                        ratio=ratios(res["onnx"], name, "yolov8n"),
                        note=f"batch 1, fused, {res['onnx_note']}"))  # fmt: skip
    return rows
