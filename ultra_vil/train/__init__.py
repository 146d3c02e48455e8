"""Classifier training engine behind scripts/train_classifier.py.

    config.py       flags, YAML run configs (cfg/classifier/*.yaml), validation
    data.py         ImageFolder with OpenCV + albumentations, bad-file handling, samplers
    fashion_mnist.py  the embedded default data: Fashion-MNIST IDX files -> ImageFolder (scripts/build_fashion_mnist.py)
    mixup.py        mixup / cutmix with label smoothing
    recipe.py       AdamW groups (weight decay, layer-wise lr decay), warmup + cosine schedule
    ema.py          EMA of the weights
    train_state.py  atomic, weights_only-loadable training checkpoints with RNG states
    distributed.py  torchrun / DDP set-up and reductions
    engine.py       the loop: `run(args)`
    evaluate.py     top-1 / top-5 over a val split, --eval-only
    report.py       metrics.csv, curves.png, config.yaml, TensorBoard
"""
