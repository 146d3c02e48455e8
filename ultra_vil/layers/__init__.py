"""Building blocks shared by the token mixers (ViL, Sequencer2D, Vim) and the models built from them.

One concept a file: `norms` (LayerNorm, MultiHeadNorm), `drop_path` (DropPath), `headwise` (HeadwiseLinear, the
block-diagonal projection), `weight_decay` (the one no-weight-decay rule). This package imports only torch, never the mixers, so every mixer can use it.

Each class's `__module__` is `ultra_vil.vil`, where these classes were first defined, and `ultra_vil.vil`
re-exports them: Ultralytics checkpoints pickle whole modules, so that path is what every checkpoint names, and
keeping it means checkpoints written before and after this package existed are the same format both ways (older
ultra-vil versions load new checkpoints too, and the weights-only allow-list keeps matching them by that path).
"""

from ultra_vil.layers.drop_path import DropPath
from ultra_vil.layers.headwise import HeadwiseLinear
from ultra_vil.layers.norms import LayerNorm, MultiHeadNorm
from ultra_vil.layers.weight_decay import NO_DECAY_NAMES, exempt_from_decay, no_decay_names

__all__ = [
    "NO_DECAY_NAMES", "DropPath", "HeadwiseLinear", "LayerNorm", "MultiHeadNorm", "exempt_from_decay", "no_decay_names",
]
