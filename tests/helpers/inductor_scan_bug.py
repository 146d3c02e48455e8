"""A reproduction of the inductor CPU bug that `ultra_vil::mlstm_chunks` (ultra_vil/mlstm/ops.py) works around.

Run as a script (it may crash the interpreter): the chunked scan's plain functions, traced into a compiled
ViLC2f(128, 128, 1) at 8 x 8 (one chunk, the parallel form, as at P5 of a 256 px YOLO input), forward and backward,
compared with eager. Prints "match" when compiled and eager agree; with torch 2.14.1 (gcc 12) the compiled forward
instead corrupts the heap ("corrupted double-linked list", SIGABRT) or fails in a later kernel ("data is not
allocated yet"). Without ultra_vil's op, the same happens to `yolo train model=yolov8n-vil.yaml compile=True`.
"""

import torch

import ultra_vil.mlstm.ops as ops
from ultra_vil.yolo.modules import ViLC2f


def plain_scan(*args):
    """The scan as the autograd Function eager code runs: dynamo traces it, inductor compiles every step."""
    return ops.ChunkScan.apply(*args)


def main() -> None:
    ops.chunk_scan = plain_scan  # what `_scan` calls
    torch.manual_seed(0)
    layer = ViLC2f(128, 128, 1)
    x = torch.randn(1, 128, 8, 8, requires_grad=True)
    eager = layer(x)
    compiled = torch.compile(layer)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    print("match")


if __name__ == "__main__":
    main()
