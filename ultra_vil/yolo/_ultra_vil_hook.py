"""ultra-vil start-up hook: registers the ViL YOLO modules when Ultralytics' model parser is imported.

`pip install` places this file and `ultra_vil.pth` (one line: `import _ultra_vil_hook`) at the root of
site-packages; Python runs that line at start-up in every interpreter, `yolo` commands and DDP workers included.
(From Python 3.15, PEP 829's `ultra_vil.start` calls `install()` instead.)

What it does at start-up: nothing but put one finder at the front of `sys.meta_path`. It uses the standard library
only and imports neither torch nor ultralytics. The finder ignores every import except `ultralytics.nn.tasks`;
for that one it wraps the real loader so that, right after the module body has run, `ultra_vil.yolo.register`
registers the modules. `import ultralytics` never breaks because of this hook, under any warnings filter: a
failure there is reported as a RuntimeWarning, or, where the filters would turn that warning into an exception
(`python -W error`, `PYTHONWARNINGS=error`, pytest's `-W error`), as one line on stderr. `ULTRA_VIL_NO_HOOK=1`
disables it (then `import ultra_vil.yolo` registers by hand).
"""

import os
import sys
import warnings

TARGET = "ultralytics.nn.tasks"
DISABLE_ENV = "ULTRA_VIL_NO_HOOK"


class _RegisteringLoader:
    """Delegates to the real loader; registers the ViL modules after the target module has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)  # errors of Ultralytics' own module body are its own: they propagate
        _register(module)

    def __getattr__(self, name):  # get_source, get_filename, is_package, ... of the real loader
        return getattr(self._loader, name)


class UltraViLFinder:
    """A sys.meta_path finder that only ever answers for `ultralytics.nn.tasks`."""

    _ultra_vil_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_ultra_vil_hook", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def _register(tasks):
    try:
        package = sys.modules.get("ultra_vil.yolo")
        if package is not None and not getattr(package, "_initialized", False):
            return  # ultra_vil.yolo is importing ultralytics right now; it registers itself when it finishes
        from ultra_vil.yolo.register import register

        register(tasks)
    except Exception as e:  # never break `import ultralytics` (ultra_vil missing or broken, unsupported version)
        _report(
            f"ultra-vil: the ViL modules could not be registered with Ultralytics ({type(e).__name__}: {e}). "
            f"Model YAMLs naming them will fail; `import ultra_vil.yolo` shows the full error."
        )


def _report(message):
    """A RuntimeWarning where the warnings filters let it be one; else (it was raised as an error) one stderr line."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return
    except Exception:  # the filters say "error" for this warning: raising it would break the importing program
        pass
    try:
        if sys.stderr is not None:
            sys.stderr.write(f"warning: {message}\n")
    except Exception:  # a closed or broken stderr: nothing is left to report to
        pass


def install():
    """Put the finder in place (idempotent); does nothing when ULTRA_VIL_NO_HOOK is set to a non-empty, non-0 value."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    if any(getattr(finder, "_ultra_vil_hook", False) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, UltraViLFinder())
    tasks = sys.modules.get(TARGET)
    if tasks is not None:  # installed late (e.g. via PEP 829 after an import): register now
        _register(tasks)


try:
    install()
except Exception as e:  # a start-up hook that raises would break every interpreter of this environment
    _report(f"ultra-vil: start-up hook not installed ({type(e).__name__}: {e})")
