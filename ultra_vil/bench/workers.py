"""Contenders in other processes: the benchmark's child-process server and the parent's handle on it (`Worker`).

A second ultra-vil checkout (e.g. a `git worktree` of an older commit) and the official `vision_lstm` package
cannot share one interpreter with this checkout (both checkouts are the package `ultra_vil`), so each runs in a
child process that builds its model once and then runs one step per request: one JSON request per stdin line, one
reply per request on stdout (prefixed with REPLY; other output, such as warnings, passes through). The parent
still interleaves the rounds (A, B, C, A, B, C, ...) and times each request; the pipe round trip (~0.1 ms) is
noise next to steps of 100 ms and more.

The child is this file run by path (`python ultra_vil/bench/workers.py --serve`) with the source under test first
on PYTHONPATH, so its `import ultra_vil` (or `import vision_lstm`) finds that source, never this checkout. The
child's sys.path[0] is then this folder, whose module names (timing, memory, ...) shadow nothing it imports. It
imports nothing of ultra_vil itself: its timing and memory helpers are timing.py and memory.py beside this file,
loaded by their paths (they need only torch and the standard library), and the contenders' code is imported by
the factory, from the source under test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPLY = "@@bench-worker "  # prefix of the child's replies on stdout; other output (warnings) passes through


def _sibling(name: str):
    """The module `name`.py beside this file, loaded by its path under a private name (not ultra_vil's)."""
    spec = importlib.util.spec_from_file_location(f"_ultra_vil_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __package__:
    from ultra_vil.bench import memory, timing
else:  # the child, run by path: this checkout's helpers by path, whatever checkout `ultra_vil` is there
    memory, timing = _sibling("memory"), _sibling("timing")


class Worker:
    """A child process that builds contenders from `src` (a checkout or a package folder) and runs them on request.

    Args:
        src: Put first on the child's PYTHONPATH (an ultra-vil checkout, or a folder holding `vision_lstm/`).
        factory: A key of FACTORIES.
        label: Names this worker in errors.
        **kwargs: For the factory (JSON-serialisable).
    """

    def __init__(self, src: str | Path, factory: str, label: str, **kwargs) -> None:
        self.label = label
        path = os.pathsep.join(p for p in (str(Path(src).resolve()), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "workers.py"), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.info = self.call(op="build", factory=factory, kwargs=kwargs)

    def call(self, **msg) -> dict:
        """Send one request and wait for its reply; the child's error comes back as RuntimeError(label: error)."""
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
        """Peak memory of one run of contender `name`, measured in the child (memory.peak_mem_mb)."""
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
        with amp() if amp else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.inference_mode(), amp() if amp else contextlib.nullcontext():
            model(x)

    info = {"params": sum(p.numel() for p in model.parameters()), "origin": origin}
    return {"train": train, "infer": infer}, info


FACTORIES = {"classifier": classifier_contenders}


def serve() -> int:
    """The child's loop: one JSON request per stdin line, one reply per request (see Worker)."""
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
                device = msg["kwargs"].get("device")
                contenders, info = FACTORIES[msg["factory"]](**msg["kwargs"])
                reply(**info, threads=torch.get_num_threads())
            elif op == "run":
                contenders[msg["name"]]()
                timing.sync(device)
                reply()
            elif op == "mem":
                reply(mb=memory.peak_mem_mb(contenders[msg["name"]], device or "cpu"))
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
        raise SystemExit("usage: python ultra_vil/bench/workers.py --serve  (a worker of scripts/benchmark.py)")
    sys.exit(serve())
