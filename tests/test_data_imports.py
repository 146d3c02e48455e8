"""The import graph: no circle in ultra_vil.data, and only ultra_vil/yolo imports ultralytics.

Two views of each rule: the source (every import statement, the ones inside functions too, since a lazy import
only hides a circle until someone moves it) and fresh interpreters (what actually happens at run time).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ultra_vil"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement of `path` names (absolute, `from x import y` also as `x.y`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _data_modules() -> list[str]:
    return sorted(_module_name(p) for p in (PACKAGE / "data").glob("*.py"))


def test_data_package_has_no_import_circle_in_its_source():
    """No module of ultra_vil.data imports another that imports it back (a function-level import counts too)."""
    modules = set(_data_modules()) - {"ultra_vil.data"}
    graph = {m: sorted(i for i in _imports(ROOT / (m.replace(".", "/") + ".py")) if i in modules and i != m)
             for m in modules}  # fmt: skip

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in sorted(modules) if (c := cycle_from(m))]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
    for reader in ("ultra_vil.data.voc", "ultra_vil.data.coco"):
        assert "ultra_vil.data.convert" not in graph[reader], f"{reader} depends on the writer"


def test_each_data_module_imports_alone_in_a_fresh_interpreter():
    """Each module first, in its own interpreter: an import circle shows up as a partially initialised module.
    `ultra_vil/__init__.py` (the classifier, so torch) is skipped with a bare package object: the data package's
    graph is what is under test, and an interpreter then starts in a fraction of a second."""
    failed = {}
    for m in _data_modules():
        code = (
            "import sys, types\n"
            f"pkg = types.ModuleType('ultra_vil'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['ultra_vil'] = pkg\n"
            f"import {m}\n"
        )
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if p.returncode:
            failed[m] = p.stderr.strip().splitlines()[-1:]
    assert not failed, failed


def test_only_ultra_vil_yolo_imports_ultralytics():
    """Only ultra_vil/yolo imports ultralytics (and ultra_vil/study, which trains YOLO models, inside the
    functions that do)."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "yolo") in path.parents or (PACKAGE / "study") in path.parents:
            continue
        names = sorted(i for i in _imports(path) if i == "ultralytics" or i.startswith("ultralytics."))
        if names:
            offenders[str(path.relative_to(ROOT))] = names
    assert not offenders, offenders
    # At run time too: every module outside ultra_vil/yolo (ultra_vil/study included), imported together,
    # leaves ultralytics unloaded.
    modules = [_module_name(p) for p in sorted(PACKAGE.rglob("*.py")) if (PACKAGE / "yolo") not in p.parents]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "loaded = sorted(m for m in sys.modules if m == 'ultralytics' or m.startswith('ultralytics.'))\n"
        "print(loaded)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
