"""Detection data tools and the embedded default data set.

Submodules are imported on demand (nothing heavy happens here). Imports go one way, with no circle:
    issues       problems tied to a file and line; DatasetError
    base         what every tool shares: Box, Sample, the image-extension list, image finding (inside the
                 source only), the out-dir rule and the marker that lists every file a tool wrote
    yolo_format  the YOLO data set format as Ultralytics reads it: data YAMLs, label paths, image sizes
    voc, coco    read Pascal VOC XML / COCO JSON annotations into `Sample`s
    convert      write samples as a YOLO data set (images/, labels/, data.yaml) without touching the source
    yolo_check   validate a YOLO data set and report problems by file and line
    split        split images into train/val by a seed
    neon_trees   the embedded NEON tree-crown set, built from the deepforest wheel with the VOC reader
CLI: scripts/convert_dataset.py. Nothing here imports ultralytics (only ultra_vil.yolo may). The classifier's
Fashion-MNIST builder lives in ultra_vil.train.fashion_mnist.
"""
