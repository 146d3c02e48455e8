"""The benchmark's correctness guard: every mLSTM backend is checked against the float64 recurrence at a short
sequence before it is timed, and a backend that disagrees is refused, not timed. On CUDA the Triton kernel's own
GPU check (`ultra_vil.mlstm.triton.check_on_device`) decides whether it is timed at all.
"""

from __future__ import annotations

import logging
import math

import torch

LOGGER = logging.getLogger(__name__)


def mlstm(*args, **kwargs):
    """ultra_vil.mlstm.mlstm, looked up on each call (a module attribute, so tests can substitute a wrong one)."""
    from ultra_vil.mlstm import mlstm as _mlstm

    return _mlstm(*args, **kwargs)


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


def guarded_backends(backends, NH, DH, device, dtype, notes) -> list[str]:
    """The backends that pass the float64 guard (a failing one is reported in `notes` and not timed)."""
    ok = []
    for be in backends:
        try:
            err = check_backend(be, NH, DH, device, dtype)
        except RuntimeError as e:
            notes.append(f"guard: {e}: not timed")
            LOGGER.warning("guard: %s", e)
            continue
        LOGGER.info("guard: %s rel. error %.1e vs float64 reference", be, err)
        ok.append(be)
    return ok


def triton_status(device) -> tuple[bool, str]:
    """(time the triton backend?, why / the GPU check's result). Only on CUDA: the CPU interpreter is for tests."""
    try:
        from ultra_vil.mlstm import triton as mlstm_triton
    except ImportError as e:
        return False, f"triton backend not importable ({e})"
    if device.type != "cuda":
        return False, "triton: CUDA only (the CPU interpreter is for tests, not timing)"
    if not mlstm_triton.available(device):
        return False, "triton: not available on this device"
    check = getattr(mlstm_triton, "check_on_device", None)
    if check is None:
        return True, "triton: the module has no check_on_device: GPU correctness check skipped"
    try:
        err = check(device)
    except RuntimeError as e:
        return False, f"triton: GPU correctness check FAILED, not timed: {e}"
    return True, f"triton: GPU correctness check passed (error {err:.1e})"
