"""The standalone Vision-LSTM image classifier (VisionLSTM2 of Alkin et al. 2024) and its presets.

    image (B, 3, H, W) -> patch embed -> + learnable 2D position embedding (bicubic-resized to the runtime grid)
    -> ViL blocks (alternating traversal by default) -> LayerNorm -> pooling -> Linear head

Presets (`VARIANTS`) count blocks, not pairs: vil_t/vil_s/vil_b are 12 pairs (24 blocks), the paper's plus variants
29 (ViL-T+) and 26 (ViL-S+) blocks. With the defaults (224 px, patch 16, bilateral concat, 1000 classes) the
parameter counts equal the reference VisionLSTM2: 6,390,760 / 23,397,160 / 89,260,456 for T / S / B.
Checkpoints written by `save_checkpoint` hold a state dict and a plain config, so they load with
`torch.load(weights_only=True)`. The released VisionLSTM2 weights load too: `create_model("vil_t", legacy_norm=True,
pretrained="vil2_tiny16_e800_in1k.th")` (names mapped by `ultra_vil.checkpoints`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ultra_vil import checkpoints
from ultra_vil.checkpoints import interpolate_pos_embed
from ultra_vil.layers import LayerNorm, no_decay_names
from ultra_vil.presets import PRESETS, release_of
from ultra_vil.vil import TRAVERSALS, ViLStack

VARIANTS = {name: preset.architecture() for name, preset in PRESETS.items()}  # name -> VisionLSTM keywords
MIXERS = ("vil", "sequencer", "vim")  # ViL; Sequencer2D blocks (ultra_vil.sequencer); Vim blocks (ultra_vil.vim)
POOLINGS = ("bilateral_concat", "bilateral_avg", "mean", "middle_patch", "middle_cls")


@dataclass
class VisionLSTMConfig:
    """VisionLSTM's arguments as one value (the fields are `VisionLSTM`'s arguments; see there).

    `to_dict()` is the plain dict a checkpoint stores (`model.config`): the fields in order, `layer_kw` flattened
    into it, `mixer` only when it is not ViL (so ViL checkpoints hold the keys they always held) and `name` (the
    preset) first when set. `from_dict` reads such a dict back: unknown keys become `layer_kw`.
    """

    dim: int = 192
    num_blocks: int = 24
    num_classes: int = 1000
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    patch_stride: int | None = None
    in_chans: int = 3
    pooling: str = "bilateral_concat"
    drop_path: float = 0.0
    traversal: str = "alternating"
    checkpoint: bool = False
    legacy_norm: bool = False
    mixer: str = "vil"
    layer_kw: dict = field(default_factory=dict)  # passed to every layer: backend, chunk_size, ...
    name: str | None = None  # the preset it was built from

    @classmethod
    def from_dict(cls, config: dict) -> VisionLSTMConfig:
        known = {f.name for f in fields(cls)} - {"layer_kw"}
        kw = {k: v for k, v in config.items() if k in known}
        if isinstance(kw.get("img_size"), list):  # YAML and JSON give lists
            kw["img_size"] = tuple(kw["img_size"])
        return cls(**kw, layer_kw={k: v for k, v in config.items() if k not in known})

    def kwargs(self) -> dict:
        """The keywords of `VisionLSTM(**...)`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layer_kw", "name")}
        return {**out, **self.layer_kw}

    def to_dict(self) -> dict:
        out = {} if self.name is None else {"name": self.name}
        out.update({k: v for k, v in asdict(self).items() if k not in ("layer_kw", "name", "mixer")})
        out.update(self.layer_kw)
        if self.mixer != "vil":
            out["mixer"] = self.mixer
        return out

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default (mixer included): the keys a checkpoint of any version can be compared on."""
        return {k: v for k, v in asdict(cls()).items() if k not in ("layer_kw", "name")}


class VisionLSTM(nn.Module):
    """ViL classifier: (B, C, H, W) -> (B, num_classes).

    Args:
        dim: Token width.
        num_blocks: ViL blocks (24 = 12 pairs for ViL-T/S/B; odd counts work).
        num_classes: Head outputs; 0 gives no head (forward returns pooled features).
        img_size: Training resolution (int or (H, W)): sizes the position embedding, which is resized at run time.
        patch_size: Patch embedding kernel.
        patch_stride: Patch embedding stride; None = patch_size. Smaller strides give overlapping patches (the
            paper's "long-sequence" fine-tune uses stride 8 with patch 16).
        in_chans: Image channels.
        pooling: One of POOLINGS.
        drop_path: Drop-path rate of every block.
        traversal: A key of ultra_vil.vil.TRAVERSALS (ViL blocks only).
        mixer: One of MIXERS: the token mixer of every block ("vil"; "sequencer": Sequencer2D blocks, BiLSTM2D +
            channel MLP, no CLS token; "vim": Vim blocks, bidirectional selective SSM).
        checkpoint: Activation checkpointing per block (memory for compute, for high resolutions).
        legacy_norm: A plain `nn.LayerNorm(num_features)` after pooling, before the head: every released v2
            checkpoint has one (`legacy_norm.weight`), so loading them needs it.
        **layer_kw: Passed to every ViLLayer (e.g. backend, chunk_size).

    The arguments are recorded in `config` (a plain dict), so `save_checkpoint` works on any instance.
    """

    def __init__(
        self,
        dim: int = 192,
        num_blocks: int = 24,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        patch_stride: int | None = None,
        in_chans: int = 3,
        pooling: str = "bilateral_concat",
        drop_path: float = 0.0,
        traversal: str = "alternating",
        checkpoint: bool = False,
        legacy_norm: bool = False,
        mixer: str = "vil",
        **layer_kw,
    ) -> None:
        super().__init__()
        self._config = VisionLSTMConfig(
            dim=dim, num_blocks=num_blocks, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
            patch_stride=patch_stride, in_chans=in_chans, pooling=pooling, drop_path=drop_path, traversal=traversal,
            checkpoint=checkpoint, legacy_norm=legacy_norm, mixer=mixer, layer_kw=layer_kw,
        ).to_dict()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; expected one of {MIXERS}")
        if mixer == "sequencer" and pooling == "middle_cls":
            raise ValueError("a Sequencer2D block mixes along grid rows and columns: it has no place for a CLS token")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch_stride = patch_size if patch_stride is None else patch_stride
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if traversal not in TRAVERSALS:
            raise ValueError(f"unknown traversal {traversal!r}; expected one of {tuple(TRAVERSALS)}")
        if dim < 1 or (2 * dim) % 16:
            raise ValueError(f"dim={dim} must be a positive multiple of 8 (4 heads x 4-wide q/k/v blocks of 2*dim)")
        if patch_size < 1 or not 1 <= patch_stride <= patch_size:
            raise ValueError(f"need 1 <= patch_stride <= patch_size, got patch_size={patch_size}, stride={patch_stride}")
        for side in img_size:
            if side < patch_size or (side - patch_size) % patch_stride:
                raise ValueError(
                    f"img_size {img_size} does not tile into patches of {patch_size} with stride {patch_stride}"
                )
        self.dim, self.pooling, self.patch_size, self.patch_stride = dim, pooling, patch_size, patch_stride
        grid = tuple((s - patch_size) // patch_stride + 1 for s in img_size)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, dim))  # (1, H', W', D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "middle_cls" else None
        if mixer == "vil":
            self.blocks = ViLStack(dim, num_blocks, traversal, drop_path, checkpoint=checkpoint, **layer_kw)
        else:
            self.blocks = MixerStack(mixer, dim, num_blocks, drop_path, checkpoint=checkpoint, **layer_kw)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.num_features = 2 * dim if pooling == "bilateral_concat" else dim
        self.legacy_norm = nn.LayerNorm(self.num_features) if legacy_norm else None
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reference init: xavier on the flattened patch conv, pos embed N(0, 0.02) truncated, MAE-style head."""
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay by name (timm's hook): position embedding, CLS token, Vim's
        A_log (`ultra_vil.layers.weight_decay`); 1-D parameters (norms, biases) are exempt by shape."""
        return no_decay_names(self)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's hook for layer-wise lr decay: regexes over parameter names. `stem` (patch and position embeddings,
        CLS token) is depth 0; `blocks` captures the block index; everything else (final norm, head) is the top.
        `coarse` is accepted for timm's signature; blocks are grouped in pairs by the recipe either way."""
        return {"stem": r"^(patch_embed|pos_embed|cls_token)", "blocks": r"^blocks\.blocks\.(\d+)\."}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block in training (timm's name for the `checkpoint` argument)."""
        self.blocks.checkpoint = bool(enable)
        self._config["checkpoint"] = bool(enable)

    def check_input_size(self, size: tuple[int, int]) -> None:
        """Raise ValueError unless an (H, W) input tiles exactly into patches: the patch conv would silently drop
        the rest (64 x 100 with patch 16 is read as its 64 x 96 crop) or fail with a bare conv error."""
        k, s = self.patch_size, self.patch_stride
        if any(side < k or (side - k) % s for side in size):
            fit = " x ".join(str(k + max(side - k, 0) // s * s) for side in size)
            raise ValueError(
                f"input size {size[0]} x {size[1]} does not tile into patches of {k} with stride {s}: each side must "
                f"be {k} + a multiple of {s} (resize, crop or pad, e.g. to {fit})"
            )

    def forward_features(self, x: Tensor, as_map: bool = False) -> Tensor:
        """Tokens after the final norm: (B, C, H, W) -> (B, S, D), or the (B, D, H', W') map with `as_map`."""
        if x.dim() != 4 or x.shape[1] != self.patch_embed.in_channels:
            raise ValueError(
                f"expected images (B, {self.patch_embed.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        self.check_input_size(tuple(x.shape[-2:]))
        x = self.patch_embed(x)  # (B, D, H', W')
        B, D, H, W = x.shape
        x = x.permute(0, 2, 3, 1) + interpolate_pos_embed(self.pos_embed, (H, W))  # (B, H', W', D)
        x = x.reshape(B, H * W, D)  # (B, S, D) row-major
        cls_index = None
        if self.cls_token is not None:  # middle CLS token (as in Vim): inserted at the centre of the sequence
            cls_index = H * W // 2
            x = torch.cat([x[:, :cls_index], self.cls_token.expand(B, -1, -1), x[:, cls_index:]], 1)  # (B, S+1, D)
        x = self.norm(self.blocks(x, (H, W), cls_index))
        if as_map:
            if cls_index is not None:
                x = torch.cat([x[:, :cls_index], x[:, cls_index + 1 :]], 1)  # drop the CLS token
            return x.transpose(1, 2).reshape(B, D, H, W)  # (B, S, D) -> (B, D, H', W')
        return x

    def pool(self, x: Tensor) -> Tensor:
        """(B, S, D) tokens -> (B, num_features)."""
        if self.pooling == "bilateral_concat":
            return torch.cat([x[:, 0], x[:, -1]], -1)  # first and last token: each saw the image in one direction
        if self.pooling == "bilateral_avg":
            return (x[:, 0] + x[:, -1]) / 2
        if self.pooling == "mean":
            return x.mean(1)
        if self.pooling == "middle_cls":
            return x[:, (x.shape[1] - 1) // 2]  # the CLS token, inserted at S // 2 of the S + 1 tokens
        return x[:, x.shape[1] // 2]  # middle_patch

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.forward_features(x))  # (B, num_features)
        if self.legacy_norm is not None:
            x = self.legacy_norm(x)
        return self.head(x)

    @property
    def config(self) -> dict:
        return dict(self._config)


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] = 224,
    patch_size: int = 16,
    patch_stride: int | None = None,
    pooling: str | None = None,
    drop_path: float | None = None,
    traversal: str = "alternating",
    legacy_norm: bool = False,
    pretrained: str | Path | None = None,
    **kwargs,
) -> VisionLSTM:
    """Build a preset of `ultra_vil.presets.PRESETS` (vil_t, vil_t_plus, vil_s, vil_s_plus, vil_b; sequencer_t,
    vim_t).

    drop_path None keeps the preset's rate, pooling None the preset's pooling (bilateral_concat for ViL). Other
    keywords of `VisionLSTM` (dim, num_blocks, checkpoint, backend, chunk_size, ...) override the preset; everything
    ends up in `model.config`, the plain dict a checkpoint stores.

    `pretrained` is a weights file: an ultra-vil checkpoint, a VisionLSTM2 state dict (torch.hub names) or a
    released `.th` file (`legacy_norm=True` for those). Tensors are matched by name (`ultra_vil.checkpoints`), the
    position embedding is resized to `img_size`, and a head for another number of classes is dropped (logged). A
    released file of another preset (by its name, `PRESETS[...].weights`) is a ValueError naming the right one.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown ViL preset {name!r}; expected one of {tuple(PRESETS)}")
    release = release_of(pretrained) if pretrained is not None else None
    if release is not None and release[0].name != name:
        raise ValueError(f"{pretrained} is the released {release[0].name}: create_model({release[0].name!r}, ...)")
    preset = {**VARIANTS[name], **kwargs}  # keyword overrides (dim, num_blocks, backend, ...) win over the preset
    if drop_path is not None:
        preset["drop_path"] = drop_path
    pooling = preset.pop("pooling", "bilateral_concat") if pooling is None else pooling
    preset.pop("pooling", None)
    config = dict(
        name=name, num_classes=num_classes, img_size=img_size, patch_size=patch_size, patch_stride=patch_stride,
        pooling=pooling, traversal=traversal, legacy_norm=legacy_norm, **preset,
    )  # this order is the one checkpoints hold
    model = build_from_config(config)
    if pretrained is not None:
        checkpoints.load_pretrained(model, pretrained)
    return model


def build_from_config(config: dict) -> VisionLSTM:
    """Rebuild a model from the plain config stored in its checkpoint."""
    model = VisionLSTM(**VisionLSTMConfig.from_dict(config).kwargs())
    model._config = dict(config)  # keeps the preset name (and keys of older checkpoints) beside the arguments
    return model


def save_checkpoint(model: VisionLSTM, path: str | Path, **extra) -> None:
    """Write {"model": state dict, "config": plain dict, **extra} atomically (`checkpoints.atomic_save`)."""
    checkpoints.atomic_save({"model": model.state_dict(), "config": model.config, **extra}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", **overrides) -> VisionLSTM:
    """Load a checkpoint of `save_checkpoint` with weights_only=True; `overrides` change the config (e.g. img_size),
    the position embedding is resized to the new grid. Other formats: `create_model(..., pretrained=path)`."""
    state, config, fmt = checkpoints.read_weights(path, map_location)
    if config is None:
        raise checkpoints.CheckpointError(
            f"is a {fmt} weights file without a model config: build the model with "
            "create_model(name, ..., pretrained=path) instead", path,
        )
    model = build_from_config({**config, **overrides})
    checkpoints.load_weights(model, state, path, drop_mismatched_head="num_classes" in overrides)
    return model


class MixerStack(nn.Module):
    """`num_blocks` Sequencer2D or Vim blocks for the classifier, called like ViLStack: (B, S, D), grid, cls_index.

    Args:
        mixer: "sequencer" (ultra_vil.sequencer.SequencerBlock) or "vim" (ultra_vil.vim.VimBlock).
        dim: Token width.
        num_blocks: Number of blocks.
        drop_path: One rate for every block, or a list with one rate per block.
        checkpoint: Recompute each block in backward (activation checkpointing).
        **block_kw: Passed to every block (Sequencer: hidden_size, mlp_ratio; Vim: expansion, state_size, ...).
    """

    def __init__(
        self, mixer: str, dim: int, num_blocks: int, drop_path: float | list[float] = 0.0, checkpoint: bool = False,
        **block_kw,
    ) -> None:  # fmt: skip
        super().__init__()
        from ultra_vil.sequencer import SequencerBlock
        from ultra_vil.vim import VimBlock

        block_cls = {"sequencer": SequencerBlock, "vim": VimBlock}[mixer]
        rates = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * num_blocks
        if num_blocks < 1 or len(rates) != num_blocks:
            raise ValueError(f"MixerStack: {num_blocks} blocks with {len(rates)} drop-path rates")
        self.mixer = mixer
        self.blocks = nn.ModuleList(block_cls(dim, drop_path=rates[b], **block_kw) for b in range(num_blocks))
        self.checkpoint = checkpoint

    def forward(self, x: Tensor, grid: tuple[int, int], cls_index: int | None = None) -> Tensor:
        extra = () if cls_index is None else (cls_index,)  # SequencerBlock takes no CLS index
        for block in self.blocks:
            if self.checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, grid, *extra, use_reentrant=False)
            else:
                x = block(x, grid, *extra)
        return x
