"""ViL block pair vs a transformer block (and vs the ViL code of another checkout): time, memory, profile.

    python scripts/profile_vil.py                               # 400 / 1600 / 6400 tokens, fwd+bwd, batch 1
    python scripts/profile_vil.py --baseline-src ../ultra-vil-0.1.0        # + that checkout's ViLBlockPair
    python scripts/profile_vil.py --profile 1600                # torch.profiler table of our pair, by self CPU
    python scripts/profile_vil.py --yolo                        # stock YOLOv8n vs cfg/yolov8n-vil.yaml at 640

Models: `ViLBlockPair(dim)` of this checkout ("vil"), `nn.TransformerEncoderLayer(dim, 4, 4 dim,
norm_first=True, batch_first=True, dropout=0)` ("attn", SDPA inside; dropout off so that it does not pay for
a mask ViL does not have), and optionally `ViLBlockPair(dim)` of `--baseline-src` with that checkout's own
mlstm.py ("base"). Each round runs every model once (A, B, C, A, B, C, ...) in this one process, so slow
phases of a shared machine hit all of them alike; the table gives min and median over rounds, and ratios of
the mins and of the medians. Peak memory: torch's own allocations during one extra fwd+bwd (parameter
gradients included), from `ultra_vil.bench.memory.peak_mem_mb`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ultra_vil.bench.memory import peak_mem_mb
from ultra_vil.vil import ViLBlockPair


def load_baseline_pair(src: Path, own_cell: bool = True) -> type[nn.Module]:
    """ViLBlockPair of another checkout, bound to that checkout's own mlstm (loaded under private names), or to
    this checkout's (`own_cell=False`: then the two differ only in the layer around the cell)."""
    mods = {}
    if not own_cell:
        mods["mlstm"] = importlib.import_module("ultra_vil.mlstm")  # the module (the package exports the function)
    for name in ("mlstm", "vil") if own_cell else ("vil",):
        mods[name], spec = _module_of(src / "ultra_vil", name)
        if name == "vil":  # its `from ultra_vil.mlstm import mlstm` must find the baseline's cell
            saved = sys.modules.get("ultra_vil.mlstm")
            sys.modules["ultra_vil.mlstm"] = mods["mlstm"]
            try:
                spec.loader.exec_module(mods[name])
            finally:
                sys.modules["ultra_vil.mlstm"] = saved
        else:
            spec.loader.exec_module(mods[name])
    return mods["vil"].ViLBlockPair


def _module_of(package: Path, name: str):
    """(module, spec) of `package/name.py`, or of the package `package/name/` (its relative imports resolve inside
    it), under the private name `_baseline_<name>`; not yet executed."""
    folder = package / name
    if (folder / "__init__.py").is_file():
        spec = importlib.util.spec_from_file_location(
            f"_baseline_{name}", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
    else:
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", package / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a package's relative imports look their parent up here
    return module, spec


def make_step(model: nn.Module, x: torch.Tensor, grid: tuple[int, int] | None, forward_only: bool = False):
    """One fwd+bwd with fresh parameter gradients (so every step allocates them, as a real step does)."""

    def step():
        if forward_only:
            with torch.no_grad():
                return model(x) if grid is None else model(x, grid)
        for p in model.parameters():
            p.grad = None
        y = model(x) if grid is None else model(x, grid)
        y.square().mean().backward()

    return step


def interleaved(steps: dict, rounds: int, clock) -> dict[str, tuple[float, float]]:
    """{name: (min, median) ms} over `rounds` rounds that each run every step once, after one warm-up each."""
    for step in steps.values():
        step()
    times = {n: [] for n in steps}
    for _ in range(rounds):
        for n, step in steps.items():
            t0 = clock()
            step()
            times[n].append((clock() - t0) * 1e3)
    return {n: (min(t), statistics.median(t)) for n, t in times.items()}


def layer_times(model, x, rounds: int) -> list[tuple[int, str, float]]:
    """(index, class name, min wall ms over rounds) of every top-level layer of an Ultralytics model, batch-1
    inference (forward hooks around each layer; the two models' rounds alternate in `layer_table`)."""
    import time

    times: dict[int, list[float]] = {}
    hooks = []
    for i, layer in enumerate(model.model):
        def start(module, args, i=i):
            times.setdefault(i, []).append(-time.perf_counter())

        def stop(module, args, out, i=i):
            times[i][-1] += time.perf_counter()

        hooks += [layer.register_forward_pre_hook(start), layer.register_forward_hook(stop)]
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return [(i, type(model.model[i]).__name__, 1000 * min(t)) for i, t in sorted(times.items())]


def layer_table(fused: dict, x, rounds: int) -> None:
    """Per-layer batch-1 inference time of the stock and the ViL model side by side (same layer index = same slot
    in YOLOv8-ViL YAMLs, which only rename blocks), the layers that differ marked."""
    per = {n: [] for n in fused}
    for _ in range(rounds):  # alternate the models round by round, as everywhere in this script
        for n, m in fused.items():
            per[n].append(layer_times(m, x, 1))
    rows = {n: [(i, c, min(r[k][2] for r in per[n])) for k, (i, c, _) in enumerate(per[n][0])] for n in per}
    print("| layer | yolov8n | ms | vil | ms | ratio |\n|---|---|---|---|---|---|")
    for (i, c0, t0), (_, c1, t1) in zip(rows["yolov8n"], rows["vil"]):
        mark = " **" if c0 != c1 else ""
        print(f"| {i}{mark} | {c0} | {t0:.1f} | {c1} | {t1:.1f} | {t1 / max(t0, 1e-9):.2f}x |")


def bench_yolo(args, clock) -> None:
    """Stock YOLOv8n vs the ViL cfg: fwd+bwd (train mode, batch --yolo-batch; time and peak memory) and batch-1
    fused inference, each interleaved; ratios ViL / stock of the mins and of the medians."""
    from ultralytics.nn.tasks import DetectionModel

    import ultra_vil.yolo  # noqa: F401  registers the ViL modules with Ultralytics' parser

    def total(out):  # train-mode Detect returns a dict / list of tensors
        if isinstance(out, torch.Tensor):
            return out.float().sum()
        return sum(total(o) for o in (out.values() if isinstance(out, dict) else out))

    models = {}
    for name, cfg in {"yolov8n": "yolov8n.yaml", "vil": args.yolo_cfg}.items():
        torch.manual_seed(0)
        models[name] = DetectionModel(cfg, nc=80, verbose=False)
    size, batch = args.yolo_size, args.yolo_batch
    x = torch.randn(batch, 3, size, size)

    def train_step(model):
        def run():
            model.train()
            for p in model.parameters():
                p.grad = None
            total(model(x)).backward()

        return run

    one = torch.rand(1, 3, size, size)

    def infer_step(model):
        def run():
            with torch.inference_mode():
                model(one)

        return run

    print(f"# {args.yolo_cfg} vs yolov8n.yaml at {size} px, {torch.get_num_threads()} threads, {args.rounds} rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} ms")
    fused = {n: copy.deepcopy(m).fuse().eval() for n, m in models.items()}
    res = interleaved({n: infer_step(m) for n, m in fused.items()}, args.rounds, clock)
    print(f"| batch-1 fused inference | yolov8n {res['yolov8n'][0]:.1f} / {res['yolov8n'][1]:.1f} | vil "
          f"{res['vil'][0]:.1f} / {res['vil'][1]:.1f} | {res['vil'][0] / res['yolov8n'][0]:.2f}x, "
          f"{res['vil'][1] / res['yolov8n'][1]:.2f}x |", flush=True)
    layer_table(fused, one, args.rounds)
    steps = {n: train_step(m) for n, m in models.items()}
    res = interleaved(steps, args.rounds, clock)
    mem = {n: peak_mem_mb(step, torch.device("cpu")) for n, step in steps.items()}
    print(f"| fwd+bwd batch {batch} | yolov8n {res['yolov8n'][0]:.0f} / {res['yolov8n'][1]:.0f} | vil "
          f"{res['vil'][0]:.0f} / {res['vil'][1]:.0f} | {res['vil'][0] / res['yolov8n'][0]:.2f}x, "
          f"{res['vil'][1] / res['yolov8n'][1]:.2f}x |")
    print(f"| peak memory fwd+bwd batch {batch} | yolov8n {mem['yolov8n']:.0f} MiB | vil {mem['vil']:.0f} MiB | "
          f"{mem['vil'] / mem['yolov8n']:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, nargs="+", default=[400, 1600, 6400], help="square grids only")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-src", type=Path, help="another checkout of ultra-vil to time beside this one")
    parser.add_argument("--baseline-cell", choices=("own", "ours"), default="own",
                        help="run the baseline's layer on its own mlstm.py or on this checkout's")
    parser.add_argument("--no-attn", action="store_true", help="skip the transformer block")
    parser.add_argument("--no-grad", action="store_true", help="time forward only, under torch.no_grad")
    parser.add_argument("--profile", type=int, metavar="TOKENS", help="print a profile of our pair and stop")
    parser.add_argument("--yolo", action="store_true",
                        help="stock yolov8n vs --yolo-cfg: batch-1 fused inference and fwd+bwd at --yolo-batch")
    parser.add_argument("--yolo-cfg", default="cfg/yolov8n-vil.yaml")
    parser.add_argument("--yolo-size", type=int, default=640)
    parser.add_argument("--yolo-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time.process_time instead of wall time: the work done, on a machine others load "
                             "too (meaningful with --threads 1; worker threads' spinning counts as work)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.yolo:
        return bench_yolo(args, clock)

    models = {"vil": (ViLBlockPair(args.dim), True)}
    if not args.no_attn:
        attn = nn.TransformerEncoderLayer(args.dim, 4, 4 * args.dim, dropout=0.0, norm_first=True, batch_first=True)
        models["attn"] = (attn, False)
    if args.baseline_src:
        base = load_baseline_pair(args.baseline_src, args.baseline_cell == "own")(args.dim)
        base.load_state_dict(models["vil"][0].state_dict())  # same weights: the checkpoint contract
        models["base"] = (base, True)

    if args.profile:
        side = int(round(args.profile**0.5))
        x = torch.randn(args.batch, side * side, args.dim)
        step = make_step(models["vil"][0], x, (side, side))
        for _ in range(2):
            step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return

    print(f"# dim {args.dim}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds, "
          f"{'forward (no_grad)' if args.no_grad else 'fwd+bwd'}, fp32, {'CPU' if args.cpu_time else 'wall'} ms")
    names = list(models)
    cols = ["tokens"] + [f"{n} min / med ms" for n in names] + [f"vil/{r} min, med" for r in names if r != "vil"]
    cols += [f"{n} peak MiB" for n in names] + [f"vil/{r} MiB" for r in names if r != "vil"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for tokens in args.tokens:
        side = int(round(tokens**0.5))
        grid = (side, side)
        x = torch.randn(args.batch, side * side, args.dim)
        steps = {}
        for n, (model, is_vil) in models.items():
            steps[n] = make_step(model, x, grid if is_vil else None, args.no_grad)
            steps[n]()  # warm-up
        times = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                t0 = clock()
                steps[n]()
                times[n].append((clock() - t0) * 1e3)
        mem = {n: peak_mem_mb(steps[n], torch.device("cpu")) for n in names}
        mins = {n: min(t) for n, t in times.items()}
        meds = {n: statistics.median(t) for n, t in times.items()}
        row = [str(side * side)] + [f"{mins[n]:.1f} / {meds[n]:.1f}" for n in names]
        row += [f"{mins['vil'] / mins[r]:.2f}x, {meds['vil'] / meds[r]:.2f}x" for r in names if r != "vil"]
        row += [f"{mem[n]:.1f}" for n in names] + [f"{mem['vil'] / mem[r]:.2f}x" for r in names if r != "vil"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
