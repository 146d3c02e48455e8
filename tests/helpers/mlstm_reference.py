"""The mLSTM as a float64 step recurrence: the oracle every backend is tested against."""

import math

import torch


def reference(q, k, v, i, f, eps=1e-6, state=None):
    """float64 recurrence, one step at a time: C_t = f C + i k v^T, n_t = f n + i k, stabilised by m."""
    q, k, v, i, f = (t.double() for t in (q, k, v, i, f))
    Bq, H, S, dk = q.shape
    if state is None:
        C = q.new_zeros(Bq, H, dk, v.shape[-1])
        n = q.new_zeros(Bq, H, dk)
        m = q.new_full((Bq, H), -math.inf)
    else:
        C, n, m = (t.double() for t in state)
    out = []
    for t in range(S):
        logf = torch.nn.functional.logsigmoid(f[:, :, t])
        m_new = torch.maximum(logf + m, i[:, :, t])
        fw, iw = torch.exp(logf + m - m_new), torch.exp(i[:, :, t] - m_new)
        kt = k[:, :, t] / math.sqrt(dk)
        C = fw[..., None, None] * C + iw[..., None, None] * kt[..., :, None] * v[:, :, t, None, :]
        n = fw[..., None] * n + iw[..., None] * kt
        m = m_new
        num = torch.einsum("bhd,bhde->bhe", q[:, :, t], C)
        den = torch.maximum((q[:, :, t] * n).sum(-1).abs(), torch.exp(-m))
        out.append(num / (den + eps)[..., None])
    return torch.stack(out, 2), (C, n, m)
