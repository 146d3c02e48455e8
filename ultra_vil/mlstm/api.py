"""`mlstm(...)`: argument checks, dtype policy, and the hand-off to the backend that runs (see `dispatch`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .chunkwise import _sanitize, fit_chunk
from .ops import _scan
from .dispatch import BACKENDS, select_backend
from .recurrent import MLSTMState, _recurrent, _require_floating, empty_state, log_forget_gate


def mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    igate: Tensor,
    fgate: Tensor,
    *,
    backend: str = "auto",
    chunk_size: int = 64,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor, Tensor] | None = None,
    return_state: bool = False,
    reverse: bool = False,
) -> Tensor | tuple[Tensor, MLSTMState]:
    """Causal mLSTM over a whole sequence.

    Args:
        q, k: Queries and keys, (B, NH, S, DK).
        v: Values, (B, NH, S, DV).
        igate: Input-gate pre-activations, (B, NH, S) (exponential gate).
        fgate: Forget-gate pre-activations, (B, NH, S) (sigmoid gate, applied in log space, clamped at LOGF_MIN:
            -inf forgets everything, +inf nothing).
        backend: "auto", "parallel", "chunkwise" or "recurrent".
        chunk_size: Largest number of steps per chunk of the chunkwise backend. S need not be a multiple of it:
            the largest divisor of S in [chunk_size / 2, chunk_size] is used when there is one (S = 400, chunk
            64 -> 50: no padded steps, 25% less time than 64 with padding at DH 128), else chunk_size with the
            tail padded.
        eps: Added to the normaliser.
        initial_state: (C, n, m) to continue from, as returned with `return_state=True`; None is the empty state.
        return_state: Also return the state after the last step.
        reverse: Traverse the sequence from step S-1 to step 0: exactly the flipped inputs' result, flipped back,
            without the flipping copies. initial_state is then the state before step S-1 and the returned state
            the one after step 0.

    Returns:
        h, (B, NH, S, DV) in v's dtype; with `return_state`, (h, MLSTMState) with the state in the compute dtype.
        Row t of h depends only on steps 0..t (steps t..S-1 with `reverse`).

    Raises:
        ValueError: An unknown backend, mismatched shapes or a bad chunk_size.
        TypeError: A tensor argument (or initial_state part) that is not floating point.
        RuntimeError: backend="triton" where the kernel cannot run (no triton, or not CUDA / TRITON_INTERPRET=1).
    """
    _check_inputs(q, k, v, igate, fgate, backend, chunk_size, initial_state)
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    if backend == "auto":
        backend = select_backend(S, q.device, q.dtype, B)
    if backend == "triton":
        return _triton(q, k, v, igate, fgate, chunk_size, eps, initial_state, return_state, reverse)

    # matmuls in the inputs' dtype when q, k, v share a half-precision one (float32 accumulation); gates, sums,
    # stabilisers, normaliser and states in float32 (float64 stays float64)
    acc = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    mm = q.dtype if q.dtype in (torch.bfloat16, torch.float16) and q.dtype == k.dtype == v.dtype else acc
    with torch.autocast(q.device.type, enabled=False):
        i_ = igate.to(acc)
        logf = log_forget_gate(fgate.to(acc))  # (B, NH, S)
        state = _initial_state(initial_state, (B, NH, DK, DV), acc)
        if S == 0:  # nothing to scan: empty output, state unchanged
            h = v.new_zeros(B, NH, 0, DV)
            last = state if state is not None else empty_state(B, NH, DK, DV, dtype=acc, device=q.device)
        elif backend == "recurrent":
            q_, k_, v_ = (t.to(acc) for t in (q, k, v))
            k_ = k_ * (1.0 / math.sqrt(DK))  # the key scaling of the contract
            h, last = _recurrent(q_, k_, v_, i_, logf, state, eps, reverse)
            h = h.to(v.dtype)
        else:
            q_, k_, v_ = (t.to(mm) for t in (q, k, v))
            k_, v_, i_ = _sanitize(k_, v_, i_)
            L = S if backend == "parallel" else fit_chunk(S, chunk_size)  # the quadratic form is one chunk
            h, last = _scan(q_, k_, v_, i_, logf, state, eps, L, reverse, v.dtype, return_state)
    return (h, last) if return_state else h


def _check_inputs(q, k, v, igate, fgate, backend: str, chunk_size, initial_state) -> None:
    """The argument checks of `mlstm`: backend name, shapes, chunk size, floating-point dtypes."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown mLSTM backend {backend!r}; expected one of {BACKENDS}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"mlstm expects q, k (B, NH, S, DK) and v (B, NH, S, DV), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if igate.shape != q.shape[:3] or fgate.shape != q.shape[:3]:
        raise ValueError(
            f"mlstm expects gates of shape (B, NH, S) = {tuple(q.shape[:3])}, "
            f"got igate {tuple(igate.shape)}, fgate {tuple(fgate.shape)}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _require_floating(q=q, k=k, v=v, igate=igate, fgate=fgate)
    if initial_state is not None:
        _require_floating(**{f"initial_state {name}": t for name, t in zip("Cnm", initial_state)})


def _initial_state(initial_state, shape: tuple[int, int, int, int], acc: torch.dtype) -> MLSTMState | None:
    """The caller's (C, n, m) checked against (B, NH, DK, DV) and cast to the compute dtype; None stays None."""
    if initial_state is None:
        return None
    B, NH, DK, DV = shape
    C0, n0, m0 = initial_state
    if C0.shape != (B, NH, DK, DV) or n0.shape != (B, NH, DK) or m0.shape != (B, NH):
        raise ValueError(
            f"initial_state must be C {(B, NH, DK, DV)}, n {(B, NH, DK)}, m {(B, NH)}; got "
            f"{tuple(C0.shape)}, {tuple(n0.shape)}, {tuple(m0.shape)}"
        )
    return MLSTMState(C0.to(acc), n0.to(acc), m0.to(acc))


def _triton(q, k, v, igate, fgate, chunk_size, eps, initial_state, return_state, reverse):
    """The fused kernel of ultra_vil/mlstm/triton.py, imported only when asked for (triton is optional)."""
    try:
        from . import triton as mlstm_triton
    except ImportError as e:  # triton itself, or the module, is missing
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor, or TRITON_INTERPRET=1") from e
    if not mlstm_triton.available(q.device):
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor, or TRITON_INTERPRET=1")
    h, last = mlstm_triton.mlstm_triton(  # reverse: the kernels read the tiles from the end (no flipped copies)
        q, k, v, igate, fgate, chunk_size=chunk_size, eps=eps, initial_state=initial_state,
        return_state=return_state, reverse=reverse,
    )
    return (h, last) if return_state else h
