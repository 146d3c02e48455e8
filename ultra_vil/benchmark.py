"""What scripts/benchmark.py measures, beyond the generic helpers of ultra_vil.measure.

- The correctness guard: every mLSTM backend is checked against the float64 recurrence at a short sequence before
  it is timed; a backend that disagrees is refused, not timed.
- The mLSTM dispatch table (`ultra_vil/mlstm/mlstm_dispatch.json`, read by `mlstm(backend="auto")`): choosing the
  thresholds from an interleaved grid of timings, and reading / writing the file's one format.
- Contenders in other processes: a second ultra-vil checkout (e.g. a `git worktree` of an older commit) and the
  official `vision_lstm` package cannot share one interpreter with this checkout (both checkouts are the package
  `ultra_vil`), so each runs in a child process (`Worker`) that builds its model once and then runs one step per
  request. The parent still interleaves the rounds (A, B, C, A, B, C, ...) and times each request; the pipe round
  trip (~0.1 ms) is noise next to steps of 100 ms and more.

Run by file path (`python ultra_vil/benchmark.py --serve`), this module is such a child. It then imports nothing
from ultra_vil before the checkout under test is first on sys.path; that is why ultra_vil imports here are lazy.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # a worker run by path: this folder (mlstm.py, vil.py, ...) must not shadow modules
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import importlib.util
import json
import math
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
DISPATCH_FILE = HERE / "mlstm" / "mlstm_dispatch.json"  # the package copy that `auto` reads
REPLY = "@@bench-worker "  # prefix of the child's replies on stdout; other output (warnings) passes through

if __package__:
    from ultra_vil import measure
    from ultra_vil.measure import peak_mem_mb, sync, time_ms  # noqa: F401  (kept importable from here)
    from ultra_vil.mlstm import DISPATCH_KEYS, validate_dispatch  # noqa: F401  (the table's one format rule)
else:  # a worker: loaded by serve() once sys.path points at the checkout under test (it never reads the table)
    measure = None


def mlstm(*args, **kwargs):
    """ultra_vil.mlstm.mlstm, imported on first use (module attribute, so tests can substitute a wrong one)."""
    from ultra_vil.mlstm import mlstm as _mlstm

    return _mlstm(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- mLSTM guard
def mlstm_inputs(B, NH, S, DH, dtype, device, requires_grad=True, seed=0):
    """q, k, v (B, NH, S, DH) and gates (B, NH, S) from randn; forget gates shifted by +3 (mostly remembering)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, NH, S, DH, generator=g) for _ in range(3))
    i = torch.randn(B, NH, S, generator=g)
    f = torch.randn(B, NH, S, generator=g) + 3.0
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v, i, f)]


def check_backend(backend: str, NH: int, DH: int, device: torch.device, dtype: torch.dtype, S: int = 130,
                  chunk_size: int = 64) -> float:
    """Relative error of `backend` (forward and the q-gradient) against the float64 recurrence at a short S.

    Raises RuntimeError when it exceeds the dtype's tolerance (1e-4 float32, 2e-2 bf16/fp16).
    """
    ins = mlstm_inputs(1, NH, S, DH, dtype, device)
    ref_ins = [t.detach().double().cpu().requires_grad_() for t in ins]
    h = mlstm(*ins, backend=backend, chunk_size=chunk_size)
    h.float().sum().backward()
    h_ref = mlstm(*ref_ins, backend="recurrent")
    h_ref.sum().backward()
    err = max(
        ((h.double().cpu() - h_ref).norm() / h_ref.norm()).item(),
        ((ins[0].grad.double().cpu() - ref_ins[0].grad).norm() / ref_ins[0].grad.norm()).item(),
    )
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not math.isfinite(err) or err > tol:
        raise RuntimeError(f"backend {backend!r} disagrees with the float64 reference: rel. error {err:.2e} > {tol}")
    return err


def sdpa_step(q, k, v):
    """Non-causal softmax attention (a ViT block's token mixer), fwd + bwd."""
    F.scaled_dot_product_attention(q, k, v).float().sum().backward()


def transformer_block(dim: int, dropout: float = 0.1) -> nn.Module:
    """The issue's width-matched baseline: PyTorch's pre-norm encoder layer, 4 heads, MLP 4x (SDPA inside).

    (B, S, dim) -> (B, S, dim). PyTorch's defaults otherwise (dropout 0.1, ReLU), as the issue's table states.
    dropout=0.0 is the fairer opponent: in training, attention dropout keeps SDPA off its fused kernels on CPU
    (an S x S matrix is formed), which flatters any linear-cost mixer at long sequences.
    """
    return nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=dropout, norm_first=True, batch_first=True)


# --------------------------------------------------------------------------------------------- dispatch table
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dispatch_pick(S: int, entry: dict, triton: bool = False) -> str:
    """The backend a dispatch entry picks at S: triton from `triton_min_seq` on (when it runs), else parallel up
    to `parallel_max_seq`, else chunkwise (the rule ultra_vil.mlstm applies to the same table)."""
    if triton and entry.get("triton_min_seq") is not None and S >= entry["triton_min_seq"]:
        return "triton"
    return "parallel" if S <= entry["parallel_max_seq"] else "chunkwise"


def pick_thresholds(grid: dict[int, dict[str, dict]], stat: str = "min") -> dict:
    """Thresholds that make `dispatch_pick` fastest over a measured grid.

    Args:
        grid: {S: {backend: {"min": ms, "median": ms, ...}}} from interleaved runs; missing backends were not run.
        stat: "min" (default: noise on a shared machine only ever adds time) or "median".

    Returns:
        {"parallel_max_seq": N, "triton_min_seq": N or None}: of all thresholds at grid points (0 = never
        parallel, None = never triton) the pair with the smallest summed slowdown vs the fastest backend at
        each S; ties go to the smaller parallel threshold (its memory grows as S^2).
    """
    seqs = sorted(grid)
    has_triton = any("triton" in grid[S] for S in seqs)
    best = {S: min(v[stat] for k, v in grid[S].items() if k in ("parallel", "chunkwise", "triton")) for S in seqs}
    choice, choice_cost = None, math.inf
    for pmax in [0, *seqs]:
        for tmin in ([None, *seqs] if has_triton else [None]):
            entry = {"parallel_max_seq": pmax, "triton_min_seq": tmin}
            cost = 0.0
            for S in seqs:
                picked = grid[S].get(dispatch_pick(S, entry, triton=has_triton))
                cost += math.inf if picked is None else picked[stat] / best[S]
            if cost < choice_cost - 1e-9:
                choice, choice_cost = entry, cost
    if choice is None:  # nothing comparable was measured (e.g. only chunkwise ran): never parallel
        choice = {"parallel_max_seq": 0, "triton_min_seq": None}
    return choice


def read_dispatch(path: str | Path = DISPATCH_FILE) -> dict:
    """The dispatch table in `path`, validated (`ultra_vil.mlstm.validate_dispatch`), strictly: a bad file raises
    (unlike `mlstm.load_dispatch`, which falls back to the built-in thresholds); an empty table (only a comment) if
    the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {"comment": f"{path.name} not found"}
    return validate_dispatch(json.loads(path.read_text()), str(path))


def write_dispatch(path: str | Path, measured: dict, comment: str, base: dict | None = None) -> dict:
    """Write `measured` ({device type: {dtype name: entry}}) over `base` (entries of other devices are kept).

    Returns the table written. The comment says where and when the numbers were measured. The package copy
    (DISPATCH_FILE) must also be complete (a cpu/float32 entry), or `import ultra_vil` would fall back to the
    built-in thresholds.
    """
    table = {"comment": comment}
    for device_type in ("cpu", "cuda"):
        merged = {**(base or {}).get(device_type, {}), **measured.get(device_type, {})}
        if merged:
            table[device_type] = merged
    path = Path(path)
    validate_dispatch(table, str(path), complete=path.resolve() == DISPATCH_FILE.resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    tmp.replace(path)
    return table


# ------------------------------------------------------------------------------- contenders in child processes
class Worker:
    """A child process that builds contenders from `src` (a checkout or a package folder) and runs them on request.

    Args:
        src: Put first on the child's sys.path (an ultra-vil checkout, or a folder holding `vision_lstm/`).
        factory: A key of FACTORIES.
        label: Names this worker in errors.
        **kwargs: For the factory (JSON-serialisable).
    """

    def __init__(self, src: str | Path, factory: str, label: str, **kwargs) -> None:
        self.label = label
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "benchmark.py"), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.info = self.call(op="build", src=str(Path(src).resolve()), factory=factory, kwargs=kwargs)

    def call(self, **msg) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.label}: the worker process has exited (status {self.proc.poll()})") from None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if "error" in reply:
                    raise RuntimeError(f"{self.label}: {reply['error']}")
                return reply
            sys.stderr.write(line)  # the child's own prints (warnings): shown, not parsed
        raise RuntimeError(f"{self.label}: the worker process exited (status {self.proc.wait()}) without a reply")

    def fn(self, name: str) -> Callable[[], dict]:
        """A zero-argument callable that runs contender `name` once in the child (and waits for it)."""
        return lambda: self.call(op="run", name=name)

    def peak_mem_mb(self, name: str) -> float:
        return self.call(op="mem", name=name)["mb"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(op="quit")
            except RuntimeError:
                pass
            self.proc.wait(timeout=60)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def classifier_contenders(kind: str, model_kw: dict, batch: int, img_size: int, device: str, seed: int = 0):
    """ViL classifier training step (fwd + bwd + AdamW) and inference, for an ultra-vil checkout or the official code.

    Args:
        kind: "ultra_vil" (`ultra_vil.create_model(**model_kw)`) or "official" (`VisionLSTM2(**model_kw)` of
            NX-AI/vision-lstm's `vision_lstm/vision_lstm2.py`).
        model_kw: Model arguments (JSON); both sides get the same seed, data and optimizer.
        batch, img_size: Random images (batch, 3, img_size, img_size) and random labels.
        device: Where to run; on CUDA the steps run under bf16 autocast.

    Returns:
        ({"train": fn, "infer": fn}, info) with the parameter count and the model's source file in info.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    if kind == "ultra_vil":
        import ultra_vil

        model = ultra_vil.create_model(**model_kw)
        origin = ultra_vil.__file__
    elif kind == "official":
        import vision_lstm.vision_lstm2 as official

        model = official.VisionLSTM2(**model_kw)
        origin = official.__file__
    else:
        raise ValueError(f"unknown classifier kind {kind!r}")
    model = model.to(device)
    num_classes = model(torch.zeros(1, 3, img_size, img_size, device=device)).shape[-1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None

    def train():
        model.train()
        with amp() if amp else _nullcontext():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.inference_mode(), amp() if amp else _nullcontext():
            model(x)

    info = {"params": sum(p.numel() for p in model.parameters()), "origin": origin}
    return {"train": train, "infer": infer}, info


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


FACTORIES = {"classifier": classifier_contenders}


def serve() -> int:
    """The child's loop: one JSON request per stdin line, one reply per request (see Worker)."""
    global measure
    out = sys.stdout
    contenders: dict[str, Callable[[], object]] = {}
    device = None

    def reply(**payload):
        out.write(REPLY + json.dumps(payload) + "\n")
        out.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            op = msg["op"]
            if op == "build":
                sys.path.insert(0, msg["src"])
                if measure is None:  # after sys.path is set, so any ultra_vil it touches is the checkout under test
                    spec = importlib.util.spec_from_file_location("_ultra_vil_measure", HERE / "measure.py")
                    measure = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(measure)
                device = msg["kwargs"].get("device")
                contenders, info = FACTORIES[msg["factory"]](**msg["kwargs"])
                reply(**info, threads=torch.get_num_threads())
            elif op == "run":
                contenders[msg["name"]]()
                measure.sync(device)
                reply()
            elif op == "mem":
                reply(mb=measure.peak_mem_mb(contenders[msg["name"]], device or "cpu"))
            elif op == "quit":
                reply()
                return 0
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as e:  # reported to the parent, which raises it with this worker's label
            reply(error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: python ultra_vil/benchmark.py --serve  (a worker of scripts/benchmark.py)")
    sys.exit(serve())
