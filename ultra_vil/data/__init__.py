"""Detection data tools and the embedded default data sets.

Submodules are imported on demand (nothing heavy happens here):
    voc, coco    read Pascal VOC XML / COCO JSON annotations into `Sample`s (ultra_vil.data.convert)
    convert      write samples as a YOLO data set (images/, labels/, data.yaml) without touching the source
    yolo_check   validate a YOLO data set and report problems by file and line
    split        split images into train/val by a seed
CLI: scripts/convert_dataset.py.
"""
