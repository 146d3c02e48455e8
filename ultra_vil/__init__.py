"""ultra-vil: Vision-LSTM (ViL) for Ultralytics YOLO and standalone classification.

`import ultra_vil` does not import ultralytics: classifier users do not pay for it. The YOLO modules live in
`ultra_vil.yolo`, which registers them with Ultralytics when imported.
"""

from ultra_vil.classifier import VARIANTS, VisionLSTM, create_model, load_checkpoint, save_checkpoint
from ultra_vil import mlstm  # the package; calling it calls ultra_vil.mlstm.mlstm (see ultra_vil/mlstm/__init__.py)

__all__ = ["VARIANTS", "VisionLSTM", "create_model", "load_checkpoint", "mlstm", "save_checkpoint"]
__version__ = "0.1.0"
