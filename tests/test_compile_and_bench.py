"""torch.compile-readiness of the ViL modules and the benchmark's correctness guard (CPU)."""

import pytest
import torch
import torch._dynamo as dynamo

import ultra_vil.benchmark as bench
from ultra_vil import create_model


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "auto"])
def test_classifier_traces_without_graph_breaks(backend):
    """Dynamo captures the whole classifier in one graph (no graph breaks in the ViL blocks or the mLSTM)."""
    model = create_model("vil_t", dim=32, num_blocks=2, img_size=32, patch_size=8, backend=backend, chunk_size=8)
    explanation = dynamo.explain(model)(torch.randn(2, 3, 32, 48))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_benchmark_refuses_a_wrong_backend(monkeypatch):
    """check_backend passes the real backends and raises for one whose numbers are off."""
    for backend in ("parallel", "chunkwise", "recurrent"):
        assert bench.check_backend(backend, NH=2, DH=16, device=torch.device("cpu"), dtype=torch.float32) < 1e-4
    real = bench.mlstm

    def off_by_a_bit(*args, **kwargs):
        out = real(*args, **kwargs)
        return out * 1.01 if kwargs.get("backend") == "chunkwise" else out

    monkeypatch.setattr(bench, "mlstm", off_by_a_bit)
    with pytest.raises(RuntimeError, match="chunkwise"):
        bench.check_backend("chunkwise", NH=2, DH=16, device=torch.device("cpu"), dtype=torch.float32)
