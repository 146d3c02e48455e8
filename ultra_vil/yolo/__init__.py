"""ViL modules for Ultralytics YOLO model YAMLs; importing this package registers them with Ultralytics.

    from ultra_vil.yolo import ViLBackbone, ViLC2f, ViLStage   # also makes them usable in any model YAML

After `pip install -e .` no import is needed: the start-up hook `_ultra_vil_hook` (a `.pth` file at the root of
site-packages) registers them whenever `ultralytics.nn.tasks` is imported, so the stock `yolo` command finds
them. Unpickling a checkpoint imports this package, which registers too. See `register.py`.
"""

from ultra_vil.yolo import register  # the submodule; ultra_vil.yolo.register.register() is the function
from ultra_vil.yolo.modules import ViLArgumentError, ViLBackbone, ViLC2f, ViLStage
from ultra_vil.yolo.register import MODULES, YAMLLayerError, is_registered

__all__ = (
    "MODULES", "ViLArgumentError", "ViLBackbone", "ViLC2f", "ViLStage", "YAMLLayerError", "is_registered", "register",
)

register.register()
_initialized = True  # last line: the start-up hook leaves registration to this file while it is still importing
