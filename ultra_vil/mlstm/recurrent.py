"""The mLSTM's shared pieces and its step recurrence, the executable specification the other backends match.

Gates (the clamped log forget gate), the state (C, n, m), input checks, the stabilised readout, and the
step-by-step recurrence (`backend="recurrent"`, and streaming with `mlstm_step`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# The log forget gate is clamped at LOGF_MIN in every backend (and the Triton kernel): a forget gate of -inf
# (sigmoid 0: forget everything) makes logsigmoid -inf, and the quadratic and chunk forms, which take differences of
# cumulative log decays, would meet -inf - -inf = NaN. exp(LOGF_MIN) is 0 even in float64 (below exp(-745)), so a
# clamped step forgets everything before it exactly as sigmoid 0 does, as long as the stabilisers on its two sides
# (about the input gates) differ by less than 1e5 - 745 (the contracts test gates up to +-1e4). The clamped steps
# are counted apart from the other steps' cumulative sum (see _decay_cumsum), so the decays after one keep their
# full precision. The gradient w.r.t. a clamped gate is 0, as the recurrence's is for a gate of -inf.
LOGF_MIN = -1e5


def log_forget_gate(fgate: Tensor) -> Tensor:
    """log sigmoid(fgate), clamped at LOGF_MIN: what every backend uses as the log forget gate."""
    return F.logsigmoid(fgate).clamp(min=LOGF_MIN)


def _require_floating(**tensors: Tensor | None) -> None:
    """Raise TypeError naming the first tensor that is not floating point (integers, bool, complex)."""
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(
                f"mlstm: {name} has dtype {t.dtype}; floating point only (float16, bfloat16, float32, float64)"
            )


class MLSTMState(NamedTuple):
    """What the recurrence carries from one step (or chunk) to the next, stabilised by m."""

    C: Tensor  # (B, NH, DK, DV) matrix memory / exp(m)
    n: Tensor  # (B, NH, DK)     normaliser / exp(m)
    m: Tensor  # (B, NH)         log-scale stabiliser


def empty_state(B: int, NH: int, DK: int, DV: int, *, dtype: torch.dtype, device: torch.device) -> MLSTMState:
    """The state before the first step: nothing stored, m = -inf."""
    return MLSTMState(
        torch.zeros(B, NH, DK, DV, dtype=dtype, device=device),
        torch.zeros(B, NH, DK, dtype=dtype, device=device),
        torch.full((B, NH), float("-inf"), dtype=dtype, device=device),
    )


# exp(-m) of the readout, computed as exp(min(-m, EXP_MAX)): where m is very negative (an input gate below about
# -88 in float32) exp(-m) is inf, and its backward would meet inf * 0 = NaN even where the max picks |den|. The cap
# changes h only where the exp branch is taken and m < -EXP_MAX, by a factor below exp(-EXP_MAX) (h ~ 1e-35 there)
EXP_MAX = {torch.float32: 80.0, torch.float64: 700.0}


def _readout(num: Tensor, den: Tensor, m: Tensor, eps: float) -> Tensor:
    """h = num / (max(|den|, exp(-m)) + eps). num (..., DV), den and m (...)."""
    normaliser = torch.maximum(den.abs(), torch.exp((-m).clamp(max=EXP_MAX[m.dtype])))
    return num / (normaliser + eps).unsqueeze(-1)


def _finite_ref(m: Tensor) -> Tensor:
    """m where it is finite, 0 where it is -inf (nothing written yet: exp(-inf - 0) = 0 instead of NaN); NaN stays."""
    return m.masked_fill(m == float("-inf"), 0.0)


def _recurrent(q, k, v, i, logf, state, eps, reverse=False):
    """One step at a time: the specification the other backends are tested against."""
    B, NH, S, DK = q.shape
    if state is None:
        state = empty_state(B, NH, DK, v.shape[-1], dtype=q.dtype, device=q.device)
    hs = []
    for t in range(S - 1, -1, -1) if reverse else range(S):
        h_t, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], logf[:, :, t], state, eps)
        hs.append(h_t)
    return torch.stack(hs[::-1] if reverse else hs, 2), state  # (B, NH, S, DV)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, state: MLSTMState, eps: float = 1e-6):
    """One recurrent step on already-scaled keys and log forget gates.

    Args:
        q, k: (B, NH, DK), k already multiplied by 1/sqrt(DK).
        v: (B, NH, DV).
        i: Input-gate pre-activation, (B, NH).
        logf: logsigmoid of the forget-gate pre-activation, (B, NH) (`mlstm` passes it clamped at LOGF_MIN; -inf
            is exact here too: the state is then forgotten with weight exp(-inf) = 0).
        state: The state after the previous step.

    Returns:
        (h_t (B, NH, DV), the new state).
    """
    C, n, m = state
    m_new = torch.maximum(logf + m, i)  # (B, NH)
    m_ref = _finite_ref(m_new)  # -inf only while nothing was ever written: then both weights below are 0, not NaN
    f_ = torch.exp(logf + m - m_ref)  # (B, NH)  0 while the state is empty (m = -inf)
    i_ = torch.exp(i - m_ref)  # (B, NH)
    C = f_[..., None, None] * C + i_[..., None, None] * (k[..., :, None] * v[..., None, :])  # (B, NH, DK, DV)
    n = f_[..., None] * n + i_[..., None] * k  # (B, NH, DK)
    num = (q[..., None, :] @ C).squeeze(-2)  # (B, NH, DV)
    den = (q * n).sum(-1)  # (B, NH)
    return _readout(num, den, m_new, eps), MLSTMState(C, n, m_new)
