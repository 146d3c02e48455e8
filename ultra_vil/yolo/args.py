"""The one argument validator of the YOLO modules: every check names the module, the argument and what it must be.

`ultra_vil.yolo.register` adds the YAML file, the layer index and the YAML row to a `ViLArgumentError` raised while
Ultralytics parses a model YAML.
"""

from __future__ import annotations

from numbers import Real

NUM_HEADS = 4  # mLSTM heads of every ViL layer (the ViL recipe); the inner width must divide by it
QKV_BLOCK_SIZE = 4  # block size of ViL's block-diagonal q/k/v projections


class ViLArgumentError(ValueError):
    """A YOLO module was given an argument it cannot use; names the module and the argument."""

    __module__ = "ultra_vil.yolo.modules"  # its public path (users catch it there)

    def __init__(self, module: str, argument: str, value, expected: str) -> None:
        self.module, self.argument, self.value, self.expected = module, argument, value, expected
        super().__init__(f"{module}: argument '{argument}' must be {expected}, got {value!r}")


def check_int(module: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViLArgumentError(module, name, value, f"an integer >= {minimum}")
    return value


def check_ratio(module: str, name: str, value, low: float, high: float) -> float:
    """A number in [low, high)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not low <= value < high:
        raise ViLArgumentError(module, name, value, f"a number in [{low}, {high})")
    return float(value)


def check_bool(module: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ViLArgumentError(module, name, value, "True or False (C3k2's YAML argument order: c2, c3k, e, attn)")
    return value


def check_channels(module: str, c1, c2, n, *, same: bool = False) -> None:
    """c1, c2 and n positive integers (the arguments Ultralytics infers and scales); `same`: a channel-preserving
    module, whose c2 after width scaling must equal c1."""
    check_int(module, "c1", c1, 1)
    check_int(module, "c2", c2, 1)
    if same and c2 != c1:
        raise ViLArgumentError(
            module,
            "c2",
            c2,
            f"equal to the input channels c1={c1} after width scaling ({module} keeps the channel count: give it "
            "the same YAML channel number as the layer it follows)",
        )
    check_int(module, "n", n, 1)


def check_hidden(module: str, e, c: int) -> int:
    """C2f's hidden-channel ratio e in (0, 1] of c channels; returns the hidden channels int(c * e) (>= 1)."""
    if isinstance(e, bool) or not isinstance(e, Real) or not 0.0 < e <= 1.0:
        hint = f" ({module} has no 'shortcut' argument: its blocks are always residual)" if isinstance(e, bool) else ""
        raise ViLArgumentError(module, "e", e, f"a hidden-channel ratio in (0, 1]{hint}")
    hidden = int(c * e)
    if hidden < 1:
        raise ViLArgumentError(module, "e", e, f"large enough that int(c2 * e) >= 1 (c2={c})")
    return hidden


def check_vil_width(module: str, name: str, value, dim: int, expansion: int, what: str) -> None:
    """The ViL inner width expansion * dim must split into NUM_HEADS heads and QKV_BLOCK_SIZE blocks."""
    inner = expansion * dim
    if inner % NUM_HEADS or inner % QKV_BLOCK_SIZE:
        raise ViLArgumentError(
            module,
            name,
            value,
            f"such that the ViL inner width expansion x {what} = {expansion} x {dim} = {inner} is divisible by "
            f"{NUM_HEADS} heads and by the q/k/v block size {QKV_BLOCK_SIZE} (channels that are a multiple of 4 work)",
        )


def check_width_ratio(module: str, name: str, value, dim: int, high: float, what: str) -> int:
    """A width ratio in (0, high) that leaves at least one unit: returns int(dim * value)."""
    check_ratio(module, name, value, 0.0, high)
    units = int(dim * value)
    if units < 1:
        raise ViLArgumentError(
            module, name, value, f"large enough that int({what} x {name}) = int({dim} x {value}) >= 1"
        )
    return units
