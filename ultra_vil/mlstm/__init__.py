"""The matrix-LSTM (mLSTM) cell: the package's single implementation, in three equivalent forms (and Triton).

Every model in ultra_vil (the ViL classifier, the YOLO modules) calls `mlstm(...)`. The three backends compute
the same function (xLSTM, arXiv:2405.04517, Sec. 2.3; ViL, arXiv:2406.04303):

    parallel   the stabilised quadratic form, O(S^2) memory: fastest for short sequences
    chunkwise  chunks of `chunk_size` with the (C, n, m) state carried between them: O(S) memory, any S
    recurrent  the step-by-step recurrence: the executable specification, and streaming

Math, per batch and head (exponential input gate, sigmoid forget gate, keys scaled by 1/sqrt(DK)):
    F_t = sum_{r<=t} max(logsigmoid(f_r), LOGF_MIN);  logD[t, s] = F_t - F_s + i_s for s <= t, else -inf
    m_t = max_s logD[t, s];  C[t, s] = (q_t . k_s / sqrt(DK)) * exp(logD[t, s] - m_t)
    n_t = max(|sum_s C[t, s]|, exp(-m_t));  h_t = sum_s C[t, s] v_s / (n_t + eps)
Recurrent form: C_t = f_t C_{t-1} + i_t k_t v_t^T, n_t = f_t n_{t-1} + i_t k_t, stabilised by
m_t = max(log f_t + m_{t-1}, i_t). The state (C, n, m) is stored stabilised: the true memory is exp(m) * C.
An empty state is C = 0, n = 0, m = -inf, so the first stabiliser equals the first input-gate pre-activation.

Shape letters follow the NX-AI code: B batch, NH heads, S sequence length, DK key/query dim, DV value dim.
All arithmetic runs in float32 (float64 stays float64) with autocast disabled; h is returned in v's dtype.
Inputs must be floating point: integer and bool tensors raise TypeError (h comes back in v's dtype, so an integer
v would truncate it).

Files:
    api.py           `mlstm(...)`: argument checks, dtype policy, hand-off to a backend
    dispatch.py      `auto`'s measured thresholds (mlstm_dispatch.json): format, rule, reading, writing, defaults
    recurrent.py     gates, state, readout and the step recurrence (the specification)
    chunkwise.py     the chunked scan behind `parallel` (one chunk) and `chunkwise`, with its own backward
    ops.py           that scan as torch.library custom ops (opaque to torch.compile, fake shapes, autograd)
    triton.py        the fused Triton kernels' launcher and checks (optional: needs triton); triton_kernels.py
"""


from __future__ import annotations

import sys
import types

from . import ops  # noqa: F401  (registers the torch.library ops ultra_vil::mlstm_chunks*)
from .api import mlstm
from .chunkwise import fit_chunk
from .dispatch import (
    BACKENDS,
    DEFAULT_DISPATCH,
    DISPATCH,
    DISPATCH_KEYS,
    DISPATCH_TABLE_PATH,
    PARALLEL_MAX_SEQ,
    dispatch_entry,
    load_dispatch,
    pick_backend,
    read_dispatch,
    select_backend,
    validate_dispatch,
    write_dispatch,
)
from .recurrent import LOGF_MIN, MLSTMState, empty_state, log_forget_gate, mlstm_step

__all__ = [
    "BACKENDS", "DEFAULT_DISPATCH", "DISPATCH", "DISPATCH_KEYS", "DISPATCH_TABLE_PATH", "LOGF_MIN", "MLSTMState",
    "PARALLEL_MAX_SEQ", "dispatch_entry", "empty_state", "fit_chunk", "load_dispatch", "log_forget_gate", "mlstm",
    "mlstm_step", "pick_backend", "read_dispatch", "select_backend", "validate_dispatch", "write_dispatch",
]


class _CallablePackage(types.ModuleType):
    """`ultra_vil.mlstm` is this package, and calling it calls the `mlstm` function: `from ultra_vil import mlstm`
    then `mlstm(q, k, v, igate, fgate)` works as it always has (dynamo traces the call like the function's),
    while `import ultra_vil.mlstm` (and `import ultra_vil.mlstm.ops`) gives the package."""

    def __call__(self, *args, **kwargs):
        return mlstm(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
