"""Swin Transformer: a hierarchical vision transformer with shifted-window attention.

The image is cut into patches (a strided convolution), then each stage runs
blocks of windowed self-attention over non-overlapping ``window_size`` x
``window_size`` windows; every second block shifts the windows by half a
window (a cyclic roll plus a mask that keeps attention inside the regions
the roll brought together). Between stages, patch merging halves the
resolution and doubles the channels.

Inputs of any size work: the image is padded (right, bottom) to a multiple
of the patch size, each block pads its feature map to a multiple of the
window, and patch merging pads odd sizes, as the reference does. When a
stage is no larger than a window, the window shrinks to the stage and the
shift is dropped (except in the backbone, which always partitions).

Tensor names match transformers' checkpoints (``attention.self.query``,
``intermediate.dense``, ...). The heads are thin wrappers:
:class:`SwinForImageClassification` (mean-pooled tokens, linear layer),
:class:`SwinForMaskedImageModeling` (SimMIM: a 1x1 convolution and pixel
shuffle back to pixels) and :class:`SwinBackbone` (normalised stage maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.backbone import BackboneMixin
from bestiary.errors import ConfigError, ProcessingError
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.nn.attention import AttentionMask, attend
from bestiary.outputs import BackboneOutput, ModelOutput
from bestiary_swin.configuration_swin import SwinConfig

Tensor = torch.Tensor


# -- outputs -------------------------------------------------------------------
@dataclass
class SwinModelOutput(ModelOutput):
    """Output of :class:`SwinModel`.

    ``hidden_states``: the embeddings then each stage's output, as (batch,
    tokens, channels). ``reshaped_hidden_states``: the same as (batch,
    channels, height, width). ``attentions``: each stage's last block's
    attention weights (batch * windows, heads, window area, window area).
    """

    last_hidden_state: Tensor = None
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class SwinImageClassifierOutput(ModelOutput):
    """Output of :class:`SwinForImageClassification`."""

    loss: Tensor | None = None
    logits: Tensor = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class SwinMaskedImageModelingOutput(ModelOutput):
    """Output of :class:`SwinForMaskedImageModeling`: the reconstructed pixels (and the masked L1 loss)."""

    loss: Tensor | None = None
    reconstruction: Tensor = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class _EncoderResult:
    last_hidden_state: Tensor
    output_size: tuple[int, int]
    hidden_states: tuple[Tensor, ...] | None
    reshaped_hidden_states: tuple[Tensor, ...] | None
    attentions: tuple[Tensor, ...] | None


# -- windows -------------------------------------------------------------------
def window_partition(features: Tensor, window: int) -> Tensor:
    """Cut (batch, H, W, C) into (batch * windows, window, window, C); H and W must be multiples of ``window``."""
    batch, height, width, channels = features.shape
    features = features.reshape(batch, height // window, window, width // window, window, channels)
    return features.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)


def window_merge(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (batch * windows, window, window, C) to (batch, H, W, C)."""
    channels = windows.shape[-1]
    windows = windows.reshape(-1, height // window, width // window, window, window, channels)
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Additive mask (windows, area, area) keeping shifted-window attention inside each rolled region.

    After rolling by ``shift``, the last ``window`` rows (and columns) of the
    map hold pixels from up to two regions that were not neighbours: rows in
    ``[H - window, H - shift)`` and rows in ``[H - shift, H)``. Tokens attend
    only to tokens of the same (row region, column region); others get -100.
    """

    def region(length: int) -> Tensor:
        position = torch.arange(length, device=device)
        return (position >= length - window).long() + (position >= length - shift).long()

    labels = region(height)[:, None] * 3 + region(width)[None, :]
    labels = window_partition(labels[None, :, :, None], window).reshape(-1, window * window)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill(different, -100.0)


def relative_position_index(window: int, table_window: int, device: torch.device | str = "cpu") -> Tensor:
    """Index (area * area) into a ((2 * table_window - 1) ** 2)-row bias table for every pair of tokens in a window.

    ``window`` may be smaller than ``table_window`` (a window shrunk to a small
    stage): each pair still reads the row of its (dy, dx) offset.
    """
    axis = torch.arange(window, device=device)
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)  # 2, area
    offsets = coords[:, :, None] - coords[:, None, :] + (table_window - 1)  # 2, area, area
    return (offsets[0] * (2 * table_window - 1) + offsets[1]).flatten()


# -- embeddings -------------------------------------------------------------------
class SwinPatchEmbeddings(nn.Module):
    """Non-overlapping patches through a strided convolution; pads the image to a multiple of the patch size."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size_2d
        image_size = config.image_size_2d
        self.grid_size = (image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Return the patch tokens (batch, patches, embed_dim) and the patch grid (height, width)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ProcessingError(
                f"pixel_values must be (batch, {self.num_channels}, height, width), got {tuple(pixel_values.shape)}; "
                "check the image processor output or the config's num_channels."
            )
        height, width = pixel_values.shape[-2:]
        pad_h = (-height) % self.patch_size[0]
        pad_w = (-width) % self.patch_size[1]
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        patches = self.projection(pixel_values)
        grid = (patches.shape[-2], patches.shape[-1])
        return patches.flatten(2).transpose(1, 2), grid


class SwinEmbeddings(nn.Module):
    """Patch embeddings, layer norm, optional mask token (masked image modeling) and absolute positions."""

    def __init__(self, config: SwinConfig, use_mask_token: bool = False) -> None:
        super().__init__()
        self.patch_embeddings = SwinPatchEmbeddings(config)
        self.patch_grid = self.patch_embeddings.grid_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if use_mask_token else None
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, self.patch_embeddings.num_patches, config.embed_dim))
            if config.use_absolute_embeddings
            else None
        )
        self.norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """Return the position embeddings resized (bicubic) from the training grid to ``grid``."""
        positions = self.position_embeddings
        if tuple(grid) == tuple(self.patch_grid):
            return positions
        dim = positions.shape[-1]
        table = positions.reshape(1, *self.patch_grid, dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, -1, dim)

    def forward(
        self,
        pixel_values: Tensor,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[Tensor, tuple[int, int]]:
        """Return the embedded tokens (batch, patches, embed_dim) and the patch grid."""
        embeddings, grid = self.patch_embeddings(pixel_values)
        embeddings = self.norm(embeddings)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ConfigError(
                    "bool_masked_pos needs a mask token, which this model was built without; "
                    "use SwinForMaskedImageModeling (or SwinModel(config, use_mask_token=True))."
                )
            if bool_masked_pos.shape[-1] != embeddings.shape[1]:
                raise ProcessingError(
                    f"bool_masked_pos has {bool_masked_pos.shape[-1]} entries per image but the input has "
                    f"{embeddings.shape[1]} patches ({grid[0]}x{grid[1]}); give one flag per patch."
                )
            mask = bool_masked_pos.reshape(embeddings.shape[0], -1, 1).to(embeddings.dtype)
            embeddings = embeddings * (1.0 - mask) + self.mask_token.to(embeddings.dtype) * mask
        if self.position_embeddings is not None:
            if interpolate_pos_encoding:
                positions = self.interpolate_pos_encoding(grid)
            elif tuple(grid) != tuple(self.patch_grid):
                raise ProcessingError(
                    f"The input gives a {grid[0]}x{grid[1]} patch grid but the absolute position embeddings "
                    f"cover {self.patch_grid[0]}x{self.patch_grid[1]} (image_size); pass "
                    "interpolate_pos_encoding=True or resize the input to image_size."
                )
            else:
                positions = self.position_embeddings
            embeddings = embeddings + positions
        return self.dropout(embeddings), grid


# -- attention -----------------------------------------------------------------------
class SwinSelfAttention(nn.Module):
    """Multi-head attention inside a window, with a learned bias per relative (dy, dx) offset."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.window_size = config.window_size
        self.dropout = config.attention_probs_dropout_prob
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * self.window_size - 1) ** 2, num_heads))
        index = relative_position_index(self.window_size, self.window_size, device="cpu")
        self.register_buffer("relative_position_index", index, persistent=False)

    def relative_position_bias(self, window: int) -> Tensor:
        """Bias (heads, area, area) for a ``window`` x ``window`` window."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size, self.relative_position_bias_table.device)
        area = window * window
        return self.relative_position_bias_table[index].view(area, area, -1).permute(2, 0, 1)

    def forward(
        self, windows: Tensor, mask: Tensor | None, window: int, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attend within each window: (batch * windows, area, dim) to the same shape, plus weights if asked."""
        count, area, dim = windows.shape
        shape = (count, area, self.num_heads, self.head_dim)
        query = self.query(windows).view(shape).transpose(1, 2)
        key = self.key(windows).view(shape).transpose(1, 2)
        value = self.value(windows).view(shape).transpose(1, 2)
        bias = self.relative_position_bias(window).to(query.dtype)[None]  # 1, heads, area, area
        if mask is not None:
            per_window = mask.shape[0]
            bias = (bias[:, None] + mask[None, :, None].to(query.dtype)).reshape(-1, per_window, *bias.shape[1:])
            bias = bias.expand(count // per_window, -1, -1, -1, -1).reshape(count, self.num_heads, area, area)
        output, weights = attend(
            query,
            key,
            value,
            AttentionMask(bias, False),
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            eager=output_attentions,
        )
        return output.reshape(count, area, dim), weights


class SwinSelfOutput(nn.Module):
    """Output projection of the attention."""

    def __init__(self, config: SwinConfig, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden_states))


class SwinAttention(nn.Module):
    """Window attention and its output projection (``attention.self`` / ``attention.output``)."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self = SwinSelfAttention(config, dim, num_heads)
        self.output = SwinSelfOutput(config, dim)

    def forward(
        self, windows: Tensor, mask: Tensor | None, window: int, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self(windows, mask, window, output_attentions)
        return self.output(attended), weights


class SwinIntermediate(nn.Module):
    """First MLP layer and activation."""

    def __init__(self, config: SwinConfig, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, int(config.mlp_ratio * dim))
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SwinOutput(nn.Module):
    """Second MLP layer."""

    def __init__(self, config: SwinConfig, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(int(config.mlp_ratio * dim), dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.dropout(self.dense(hidden_states))


class SwinDropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``drop_prob`` in training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
        kept = torch.floor(keep + torch.rand(shape, dtype=hidden_states.dtype, device=hidden_states.device))
        return hidden_states / keep * kept


class SwinLayer(nn.Module):
    """One Swin block: (shifted) window attention and an MLP, each pre-normed with a residual."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, drop_path: float, shift_size: int) -> None:
        super().__init__()
        self.window_size = config.window_size
        self.shift_size = shift_size
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = SwinAttention(config, dim, num_heads)
        self.drop_path = SwinDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.intermediate = SwinIntermediate(config, dim)
        self.output = SwinOutput(config, dim)

    def window_and_shift(self, size: tuple[int, int], always_partition: bool) -> tuple[int, int]:
        """The window and shift used on a (height, width) map: shrunk to the map when it is no larger than a window."""
        if not always_partition and min(size) <= self.window_size:
            return min(size), 0
        return self.window_size, self.shift_size

    def forward(
        self, hidden_states: Tensor, size: tuple[int, int], always_partition: bool = False, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Run the block on (batch, height * width, dim) tokens of a (height, width) map."""
        height, width = size
        window, shift = self.window_and_shift(size, always_partition)
        batch, _, channels = hidden_states.shape
        shortcut = hidden_states
        features = self.layernorm_before(hidden_states).view(batch, height, width, channels)
        pad_h, pad_w = (-height) % window, (-width) % window
        if pad_h or pad_w:
            features = F.pad(features, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        if shift:
            features = torch.roll(features, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(features, window).reshape(-1, window * window, channels)
        mask = (
            shifted_window_mask(padded_h, padded_w, window, shift, features.dtype, features.device) if shift else None
        )
        attended, weights = self.attention(windows, mask, window, output_attentions)
        features = window_merge(attended.reshape(-1, window, window, channels), window, padded_h, padded_w)
        if shift:
            features = torch.roll(features, shifts=(shift, shift), dims=(1, 2))
        features = features[:, :height, :width, :].reshape(batch, height * width, channels)
        hidden_states = shortcut + self.drop_path(features)
        hidden_states = hidden_states + self.output(self.intermediate(self.layernorm_after(hidden_states)))
        return hidden_states, weights


class SwinPatchMerging(nn.Module):
    """Halve the resolution and double the channels: concatenate 2x2 neighbours, normalise, project."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, hidden_states: Tensor, size: tuple[int, int]) -> Tensor:
        """(batch, H * W, dim) to (batch, ceil(H / 2) * ceil(W / 2), 2 * dim); odd sizes are padded first."""
        height, width = size
        batch, _, channels = hidden_states.shape
        features = hidden_states.reshape(batch, height, width, channels)
        if height % 2 or width % 2:
            features = F.pad(features, (0, 0, 0, width % 2, 0, height % 2))
        # Neighbours in the order (top-left, bottom-left, top-right, bottom-right), as checkpoints expect.
        merged = torch.cat(
            [features[:, 0::2, 0::2], features[:, 1::2, 0::2], features[:, 0::2, 1::2], features[:, 1::2, 1::2]],
            dim=-1,
        )
        merged = merged.view(batch, -1, 4 * channels)
        return self.reduction(self.norm(merged))


class SwinStage(nn.Module):
    """Blocks alternating plain and shifted windows, then patch merging (all stages but the last)."""

    def __init__(
        self, config: SwinConfig, dim: int, depth: int, num_heads: int, drop_path: list[float], downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinLayer(config, dim, num_heads, drop_path[i], 0 if i % 2 == 0 else config.window_size // 2)
                for i in range(depth)
            ]
        )
        self.downsample = SwinPatchMerging(dim) if downsample else None

    def forward(
        self, hidden_states: Tensor, size: tuple[int, int], always_partition: bool = False, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor, tuple[int, int], Tensor | None]:
        """Return (output, output before merging, output size, last block's attention weights)."""
        weights = None
        for block in self.blocks:
            hidden_states, weights = block(hidden_states, size, always_partition, output_attentions)
        before = hidden_states
        if self.downsample is not None:
            hidden_states = self.downsample(before, size)
            size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        return hidden_states, before, size, weights


def _to_map(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    batch, _, channels = tokens.shape
    return tokens.view(batch, size[0], size[1], channels).permute(0, 3, 1, 2).contiguous()


class SwinEncoder(nn.Module):
    """The stages, with linearly increasing stochastic depth."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for index, depth in enumerate(config.depths):
            self.layers.append(
                SwinStage(
                    config,
                    dim=int(config.embed_dim * 2**index),
                    depth=depth,
                    num_heads=config.num_heads[index],
                    drop_path=rates[start : start + depth],
                    downsample=index < len(config.depths) - 1,
                )
            )
            start += depth

    def forward(
        self,
        hidden_states: Tensor,
        size: tuple[int, int],
        *,
        always_partition: bool = False,
        output_hidden_states: bool = False,
        output_hidden_states_before_downsampling: bool = False,
        output_attentions: bool = False,
    ) -> _EncoderResult:
        """Run every stage; collect per-stage states when asked."""
        states = [hidden_states] if output_hidden_states else None
        maps = [_to_map(hidden_states, size)] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for stage in self.layers:
            stage_size = size
            hidden_states, before, size, weights = stage(hidden_states, size, always_partition, output_attentions)
            if states is not None:
                states.append(hidden_states)
                if output_hidden_states_before_downsampling:
                    maps.append(_to_map(before, stage_size))
                else:
                    maps.append(_to_map(hidden_states, size))
            if attentions is not None:
                attentions.append(weights)
        return _EncoderResult(
            last_hidden_state=hidden_states,
            output_size=size,
            hidden_states=tuple(states) if states is not None else None,
            reshaped_hidden_states=tuple(maps) if maps is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )


# -- models ----------------------------------------------------------------------------
class SwinPreTrainedModel(PreTrainedModel):
    """Weight initialisation and checkpoint naming shared by the Swin models."""

    config_class = SwinConfig
    base_model_prefix = "swin"
    main_input_name = "pixel_values"
    # relative_position_index was a saved buffer in older checkpoints; it is computed here.
    _keys_to_ignore_on_load_unexpected = [r"relative_position_index$", r"\.attn_mask$"]
    # Names transformers 5 uses in memory, in case a state dict was saved with them.
    _checkpoint_key_renames = [
        (r"\.attention\.q_proj\.", ".attention.self.query."),
        (r"\.attention\.k_proj\.", ".attention.self.key."),
        (r"\.attention\.v_proj\.", ".attention.self.value."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (
            r"\.attention\.relative_position_bias\.relative_position_bias_table$",
            ".attention.self.relative_position_bias_table",
        ),
        (r"\.mlp\.fc1\.", ".intermediate.dense."),
        (r"\.mlp\.fc2\.", ".output.dense."),
    ]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, SwinEmbeddings):
            if module.mask_token is not None:
                module.mask_token.data.zero_()
            if module.position_embeddings is not None:
                module.position_embeddings.data.zero_()
        elif isinstance(module, SwinSelfAttention):
            module.relative_position_bias_table.data.zero_()


def _flags(config: SwinConfig, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None):
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


class SwinModel(SwinPreTrainedModel):
    """The bare Swin encoder: final layer norm and (by default) mean pooling of the tokens."""

    def __init__(self, config: SwinConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        self.num_layers = len(config.depths)
        self.num_features = config.hidden_size
        self.embeddings = SwinEmbeddings(config, use_mask_token=use_mask_token)
        self.encoder = SwinEncoder(config)
        self.layernorm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.add_pooling_layer = add_pooling_layer
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding."""
        return self.embeddings.patch_embeddings

    def encode(
        self,
        pixel_values: Tensor,
        *,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        always_partition: bool = False,
        output_hidden_states_before_downsampling: bool = False,
    ) -> tuple[SwinModelOutput, tuple[int, int]]:
        """Return the model output and the final token grid (height, width)."""
        embeddings, size = self.embeddings(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        encoded = self.encoder(
            embeddings,
            size,
            always_partition=always_partition,
            output_hidden_states=output_hidden_states,
            output_hidden_states_before_downsampling=output_hidden_states_before_downsampling,
            output_attentions=output_attentions,
        )
        sequence = self.layernorm(encoded.last_hidden_state)
        output = SwinModelOutput(
            last_hidden_state=sequence,
            pooler_output=sequence.mean(dim=1) if self.add_pooling_layer else None,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            reshaped_hidden_states=encoded.reshaped_hidden_states,
        )
        return output, encoded.output_size

    def forward(
        self,
        pixel_values: Tensor,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        always_partition: bool = False,
        output_hidden_states_before_downsampling: bool = False,
    ) -> SwinModelOutput | tuple:
        """Encode (batch, channels, height, width) pixels into tokens (batch, tokens, hidden_size)."""
        output_attentions, output_hidden_states, return_dict = _flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        output, _ = self.encode(
            pixel_values,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            always_partition=always_partition,
            output_hidden_states_before_downsampling=output_hidden_states_before_downsampling,
        )
        return output if return_dict else output.to_tuple()


class SwinForImageClassification(SwinPreTrainedModel):
    """Swin with a linear classifier on the mean-pooled final tokens."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.swin = SwinModel(config)
        self.classifier = (
            nn.Linear(self.swin.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SwinImageClassifierOutput | tuple:
        """Return class logits (and the loss when ``labels`` are given)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.swin(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        output = SwinImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            reshaped_hidden_states=outputs.reshaped_hidden_states,
        )
        return output if return_dict else output.to_tuple()


def classification_loss(logits: Tensor, labels: Tensor, config: Any) -> Tensor:
    """Regression, single-label or multi-label loss, chosen (and recorded) like transformers does."""
    num_labels = logits.shape[-1]
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
        config.problem_type = problem
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ConfigError(
        f"problem_type {problem!r} is not one of 'regression', 'single_label_classification', "
        "'multi_label_classification'; fix the config's problem_type."
    )


class SwinForMaskedImageModeling(SwinPreTrainedModel):
    """SimMIM: Swin with mask tokens and a decoder (1x1 convolution + pixel shuffle) reconstructing pixels."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        self.swin = SwinModel(config, add_pooling_layer=False, use_mask_token=True)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, config.encoder_stride**2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(config.encoder_stride),
        )
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SwinMaskedImageModelingOutput | tuple:
        """Reconstruct the pixels; with ``bool_masked_pos`` (batch, patches), also the L1 loss on masked patches."""
        output_attentions, output_hidden_states, return_dict = _flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        outputs, size = self.swin.encode(
            pixel_values,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        reconstruction = self.decoder(_to_map(outputs.last_hidden_state, size))
        loss = None
        if bool_masked_pos is not None:
            loss = self._masked_loss(pixel_values, reconstruction, bool_masked_pos)
        output = SwinMaskedImageModelingOutput(
            loss=loss,
            reconstruction=reconstruction,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            reshaped_hidden_states=outputs.reshaped_hidden_states,
        )
        return output if return_dict else output.to_tuple()

    def _masked_loss(self, pixel_values: Tensor, reconstruction: Tensor, bool_masked_pos: Tensor) -> Tensor:
        if reconstruction.shape != pixel_values.shape:
            raise ProcessingError(
                f"The reconstruction {tuple(reconstruction.shape)} does not cover the input "
                f"{tuple(pixel_values.shape)}: the masked-image loss needs height and width that are multiples of "
                f"encoder_stride ({self.config.encoder_stride})."
            )
        patch_h, patch_w = self.config.patch_size_2d
        grid = (pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w)
        mask = bool_masked_pos.reshape(-1, *grid).repeat_interleave(patch_h, 1).repeat_interleave(patch_w, 2)
        mask = mask.unsqueeze(1).to(pixel_values.dtype)
        error = F.l1_loss(pixel_values, reconstruction, reduction="none")
        return (error * mask).sum() / (mask.sum() + 1e-5) / self.config.num_channels


class SwinBackbone(BackboneMixin, SwinPreTrainedModel):
    """Swin as a backbone: layer-normed feature maps of the stages chosen by ``out_features`` / ``out_indices``.

    Stages are ``["stem", "stage1", ..., "stageN"]``; each stage's map is taken
    before its patch merging, so ``stageK`` has stride ``patch_size * 2**(K-1)``.
    Windows are always partitioned (never shrunk), as in the reference.
    """

    # A SwinModel-style checkpoint carries a final layer norm the backbone does not use.
    _keys_to_ignore_on_load_unexpected = [
        *SwinPreTrainedModel._keys_to_ignore_on_load_unexpected,
        r"^(swin\.)?layernorm\.",
        r"^(swin\.)?pooler\.",
    ]

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        self._init_backbone(config.stage_names, config.stage_channels(), config.stage_strides())
        self.num_features = config.stage_channels()
        self.embeddings = SwinEmbeddings(config)
        self.encoder = SwinEncoder(config)
        self.hidden_states_norms = nn.ModuleDict(
            {stage: nn.LayerNorm(channels) for stage, channels in zip(self.out_features, self.channels)}
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding."""
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BackboneOutput | tuple:
        """Return ``feature_maps``: one (batch, channels, height, width) map per selected stage, in order.

        ``interpolate_pos_encoding`` resizes absolute position embeddings (when
        the config uses them) to the input, for inputs of another size.
        """
        output_attentions, output_hidden_states, return_dict = _flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        embeddings, size = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        encoded = self.encoder(
            embeddings,
            size,
            always_partition=True,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
            output_attentions=output_attentions,
        )
        feature_maps = []
        for stage, stage_map in zip(self.out_features, self._select_feature_maps(encoded.reshaped_hidden_states)):
            normed = self.hidden_states_norms[stage](stage_map.permute(0, 2, 3, 1))
            feature_maps.append(normed.permute(0, 3, 1, 2).contiguous())
        output = BackboneOutput(
            feature_maps=tuple(feature_maps),
            hidden_states=encoded.reshaped_hidden_states if output_hidden_states else None,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "SwinPreTrainedModel",
    "SwinModel",
    "SwinForImageClassification",
    "SwinForMaskedImageModeling",
    "SwinBackbone",
    "SwinModelOutput",
    "SwinImageClassifierOutput",
    "SwinMaskedImageModelingOutput",
]
