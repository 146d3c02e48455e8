"""ViL modules for Ultralytics YOLO model YAMLs; importing this package registers them with Ultralytics.

    from ultra_vil.yolo import ViLBackbone, ViLC2f, ViLStage   # also makes them usable in any model YAML

After `pip install -e .` no import is needed: the start-up hook `_ultra_vil_hook` (a `.pth` file at the root of
site-packages) registers them whenever `ultralytics.nn.tasks` is imported, so the stock `yolo` command finds
them. Unpickling a checkpoint imports this package, which registers too. See `register.py`.

With the hook off (`ULTRA_VIL_NO_HOOK=1`) only processes that import this package know the modules: importing it
then says so (`HOOK_OFF_NOTE`), since the `yolo` command and the processes Ultralytics starts by itself (DDP
training with `device=0,1`) end in a bare `KeyError: 'ViLC2f'` from Ultralytics' parser, where ultra-vil cannot
speak.
"""

import os as _os
import sys as _sys
import warnings as _warnings

from ultra_vil.yolo import register  # the submodule; ultra_vil.yolo.register.register() is the function
from ultra_vil.yolo.modules import ViLArgumentError, ViLBackbone, ViLC2f, ViLStage
from ultra_vil.yolo.register import MODULES, YAMLLayerError, is_registered

__all__ = (
    "MODULES", "ViLArgumentError", "ViLBackbone", "ViLC2f", "ViLStage", "YAMLLayerError", "is_registered", "register",
)

HOOK_OFF_NOTE = (
    "ultra-vil: ULTRA_VIL_NO_HOOK is set, so the ViL modules are registered only in processes that import "
    "ultra_vil.yolo (this one does). The `yolo` command and processes Ultralytics starts by itself (DDP training "
    "with device=0,1) will fail with KeyError: 'ViLC2f'. Unset ULTRA_VIL_NO_HOOK, or run `import ultra_vil.yolo` "
    "in each process before it builds a ViL model."
)


def hook_disabled() -> bool:
    """Whether ULTRA_VIL_NO_HOOK turns the start-up hook off (the hook's own rule: set, non-empty, not '0')."""
    return _os.environ.get("ULTRA_VIL_NO_HOOK", "") not in ("", "0")


register.register()
if hook_disabled():
    try:  # a RuntimeWarning, or one stderr line where the filters would raise it (as the hook itself reports)
        _warnings.warn(HOOK_OFF_NOTE, RuntimeWarning, stacklevel=2)
    except Exception:
        print(f"warning: {HOOK_OFF_NOTE}", file=_sys.stderr)
_initialized = True  # last line: the start-up hook leaves registration to this file while it is still importing
