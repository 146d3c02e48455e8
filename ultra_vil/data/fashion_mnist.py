"""Moved to `ultra_vil.train.fashion_mnist` (the builder serves the classifier, not detection); this name keeps
working for code that imported it here."""

from ultra_vil.train.fashion_mnist import (  # noqa: F401
    CLASS_NAMES,
    DEFAULT_SOURCE,
    FILES,
    INSTALL_HINT,
    build_image_folder,
    class_folder,
    read_idx,
)
