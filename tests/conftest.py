import os

# before anything imports triton (`import torch._dynamo` does, at collection): triton set up without the interpreter
# cannot run the kernels of tests/test_mlstm_triton.py on CPU ("Cannot call @triton.jit'd outside of the scope of
# a kernel"). On a GPU machine, TRITON_INTERPRET=0 runs those tests on CUDA instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let Ultralytics try the network from a test
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped without CUDA. Every other test runs (markers slow and cli only select:
    `pytest -m "not slow"` is the fast loop)."""
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))


def load_script(name: str, folder: str = "scripts"):
    """<folder>/<name>.py of the repository (scripts/ by default) as a module (registered in sys.modules, as its
    dataclasses need)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script():
    """`script("compare")` -> scripts/compare.py as a module."""
    return load_script
