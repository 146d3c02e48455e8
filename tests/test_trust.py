"""Issue 11, "no silent wrong answers": one test per defect of the classifier, the trainer's error reporting and
the start-up hook. Each docstring says how the code before the fix (commit 3c73528) failed it.
The data tools' defects (data loss, reads outside the source, --check counts) are in test_data_tools.py.
The last two tests: scripts/checkpoint_range.py runs no code a checkpoint's pickle names, unless told to trust it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ultra_vil import create_model

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- defect 4: silent crop
def _tiny(**kw):
    return create_model("vil_t", dim=32, num_blocks=2, num_classes=3, img_size=64, patch_size=16, **kw).eval()


def test_input_that_does_not_tile_is_refused():
    """64 x 100 with patch 16: before, the patch conv dropped the last 4 columns and the output equalled that of
    the 64 x 96 crop, without a word. Now a ValueError names the size and the patch."""
    model = _tiny()
    with pytest.raises(ValueError, match=r"64 x 100.*patches of 16"):
        model(torch.randn(1, 3, 64, 100))
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)  # a size that tiles still runs (another grid)


def test_input_smaller_than_a_patch_is_refused_clearly():
    """8 x 8 with patch 16: before, a raw RuntimeError from the conv ("Kernel size can't be greater than actual
    input size"); now a ValueError naming the size and the patch."""
    with pytest.raises(ValueError, match=r"8 x 8.*patches of 16"):
        _tiny()(torch.randn(1, 3, 8, 8))


def test_overlapping_patches_check_the_stride():
    model = create_model("vil_t", dim=32, num_blocks=2, num_classes=3, img_size=32, patch_size=8, patch_stride=4)
    model.eval()
    assert model(torch.randn(1, 3, 36, 32)).shape == (1, 3)  # 36 = 8 + 7 * 4
    with pytest.raises(ValueError, match="stride 4"):
        model(torch.randn(1, 3, 34, 32))


# ------------------------------------------------------------------------------ defect 5: middle_cls on odd grids
@pytest.mark.parametrize("side", [112, 96])  # grids 7 x 7 (odd S = 49) and 6 x 6 (even S = 36)
def test_middle_cls_pools_the_cls_token(side):
    """On a 7 x 7 grid the CLS token was written at 49 // 2 = 24 and read at 50 // 2 = 25 (a patch token): this
    test failed for side 112. The index the blocks are told (their cls_index argument) is where the CLS token
    is, and the pooled vector must be that token's output."""
    model = _tiny(pooling="middle_cls")
    seen = {}
    model.blocks.register_forward_pre_hook(lambda mod, args: seen.update(cls_index=args[2]))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, S + 1, D)
        pooled = model.pool(tokens)
    grid = side // 16
    assert tokens.shape[1] == grid * grid + 1
    assert seen["cls_index"] == grid * grid // 2
    torch.testing.assert_close(pooled, tokens[:, seen["cls_index"]], rtol=0, atol=0)


# --------------------------------------------------------------- defect 3: the start-up hook under -W error
def _shadow(tmp_path: Path, broken: str) -> Path:
    """A folder that, first on PYTHONPATH, hides the real ultra_vil behind a broken one (the editable install is a
    path entry, so PYTHONPATH wins): 'import' fails to import at all, 'version' raises as register() does for an
    unsupported Ultralytics."""
    pkg = tmp_path / "shadow" / "ultra_vil"
    (pkg / "yolo").mkdir(parents=True)
    if broken == "import":
        (pkg / "__init__.py").write_text("raise ImportError('ultra_vil broken on purpose')\n")
    else:
        (pkg / "__init__.py").write_text("")
        (pkg / "yolo" / "__init__.py").write_text("_initialized = True\n")
        (pkg / "yolo" / "register.py").write_text(
            "def register(tasks=None):\n    raise RuntimeError('Ultralytics 99.0 is not supported (on purpose)')\n"
        )
    return pkg.parent


def _hook_installed() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("_ultra_vil_hook")
    source = (ROOT / "ultra_vil" / "yolo" / "_ultra_vil_hook.py").read_text()
    return spec is not None and Path(spec.origin).read_text() == source


@pytest.mark.parametrize(
    "broken, how", [("import", ["-Werror"]), ("version", ["PYTHONWARNINGS=error"])], ids=["-W error", "PYTHONWARNINGS"]
)
def test_hook_never_breaks_import_ultralytics(tmp_path, broken, how):
    """A failed registration under an "error" warnings filter: before, the hook's RuntimeWarning was raised as an
    exception and `import ultralytics.nn.tasks` (so every `yolo` command) failed. Now the import succeeds and
    the reason reaches stderr as one line."""
    if not _hook_installed():
        pytest.skip("the installed start-up hook differs from ultra_vil/yolo/_ultra_vil_hook.py: pip install -e .")
    env = {k: v for k, v in os.environ.items() if k not in ("ULTRA_VIL_NO_HOOK", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(_shadow(tmp_path, broken))
    flags = [x for x in how if x.startswith("-")]
    env.update(x.split("=", 1) for x in how if "=" in x)
    code = "import ultralytics.nn.tasks; print('imported')"
    p = subprocess.run([sys.executable, *flags, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "imported"
    expected = "broken on purpose" if broken == "import" else "not supported (on purpose)"
    assert "ultra-vil: the ViL modules could not be registered" in p.stderr and expected in p.stderr, p.stderr


# ----------------------------------------------------------------------- defect 8: the hook off, said where we can
def test_import_ultra_vil_yolo_says_when_the_hook_is_off(tmp_path):
    """With ULTRA_VIL_NO_HOOK=1, before, nothing said that only this process knew the modules: the `yolo` command
    and Ultralytics' DDP workers then ended in a bare KeyError: 'ViLC2f'. Now `import ultra_vil.yolo` (the
    README's Python path, and compare.py's) says the hook is off and how to register by hand."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["ULTRA_VIL_NO_HOOK"] = "1"
    code = "import ultra_vil.yolo as y; assert y.is_registered(); print('registered')"
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "registered", p.stderr[-2000:]
    assert "ULTRA_VIL_NO_HOOK is set" in p.stderr and "`import ultra_vil.yolo` in each process" in p.stderr


# --------------------------------------------------------- scripts/checkpoint_range.py: a checkpoint runs no code
class _RunsCode:
    """Unpickles by calling exec: what a malicious .pt does (here it only writes a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_checkpoint_range_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    """Before, the script unpickled with weights_only=False: the file's code ran (the marker was written). Now it
    loads with weights_only=True and the allow-list of model classes, refuses with one line naming the file and
    exit status 2; only --trust loads it the old way, with a warning."""
    from conftest import load_script

    script = load_script("checkpoint_range")
    marker, evil = tmp_path / "ran.txt", tmp_path / "evil.pt"
    torch.save({"ema": _RunsCode(marker), "model": None}, evil)
    assert script.main([str(evil)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {evil}: ") and "--trust" in errors[0], err
    assert not marker.exists()
    with pytest.warns(UserWarning, match=r"evil\.pt: loaded with torch\.load\(weights_only=False\) on trust"):
        assert script.main([str(evil), "--trust"]) == 2  # it ran, and then held no model
    assert marker.read_text() == "ran"  # the file does run code: the refusal above is what kept it from running


def test_checkpoint_range_reads_an_ultralytics_checkpoint_without_trust(tmp_path):
    """A checkpoint as Ultralytics' trainer saves it (EMA model of ViL modules in float16, optimizer state, train
    args, NumPy metrics) loads under the restricted loader, in a fresh interpreter."""
    import copy

    import numpy as np

    tasks = pytest.importorskip("ultralytics.nn.tasks")
    import ultra_vil.yolo  # noqa: F401  (registers the ViL modules for the YAML)

    torch.manual_seed(0)
    model = tasks.DetectionModel(str(ROOT / "cfg" / "yolov8n-vil.yaml"), nc=2, verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(p.square().sum() for p in model.parameters()).backward()  # any gradient: the momentum buffers exist
    optimizer.step()
    ckpt = {"epoch": 0, "best_fitness": np.float64(0.1), "model": None, "ema": copy.deepcopy(model).half(),
            "updates": 1, "optimizer": optimizer.state_dict(), "train_args": {"imgsz": 64, "model": "yolov8n-vil.yaml"},
            "train_metrics": {"metrics/mAP50(B)": np.float64(0.2)}, "date": "2025-01-01T00:00:00", "version": "8.4"}
    path = tmp_path / "last.pt"
    torch.save(ckpt, path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "ULTRALYTICS_SAFE_LOAD")}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "checkpoint_range.py"), str(path)], env=env,
                       cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith(f"| {path} |")]
    assert len(rows) == 1 and "weights_only=False" not in p.stderr, p.stdout + p.stderr
