"""torch.compile of the ViL modules on CPU: dynamo captures them without graph breaks."""

import pytest
import torch
import torch._dynamo as dynamo

from ultra_vil import create_model


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "auto"])
def test_classifier_traces_without_graph_breaks(backend):
    """Dynamo captures the whole classifier in one graph (no graph breaks in the ViL blocks or the mLSTM)."""
    model = create_model("vil_t", dim=32, num_blocks=2, img_size=32, patch_size=8, backend=backend, chunk_size=8)
    explanation = dynamo.explain(model)(torch.randn(2, 3, 32, 48))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
