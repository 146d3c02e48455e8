"""The start-up hook (ultra_vil/yolo/_ultra_vil_hook.py): it never breaks `import ultralytics`, and with the hook
turned off the process that registers by hand says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- the hook under -W error
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
    """A failed registration under an "error" warnings filter: a RuntimeWarning would be raised as an exception and
    fail `import ultralytics.nn.tasks` (so every `yolo` command); the import succeeds and the reason reaches
    stderr as one line."""
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


# -------------------------------------------------------------------------- the hook off, said where we can
def test_import_ultra_vil_yolo_says_when_the_hook_is_off(tmp_path):
    """With ULTRA_VIL_NO_HOOK=1 only a process that imports ultra_vil.yolo knows the modules (the `yolo` command and
    Ultralytics' DDP workers end in a bare KeyError: 'ViLC2f'): `import ultra_vil.yolo` says the hook is off and
    how to register by hand."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["ULTRA_VIL_NO_HOOK"] = "1"
    code = "import ultra_vil.yolo as y; assert y.is_registered(); print('registered')"
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "registered", p.stderr[-2000:]
    assert "ULTRA_VIL_NO_HOOK is set" in p.stderr and "`import ultra_vil.yolo` in each process" in p.stderr
