"""Qwen2-VL: a vision transformer feeding a Qwen2 decoder with multimodal rotary positions (M-RoPE).

Reading order:

1. The vision tower. The image processor cuts each image (or each pair of
   video frames) into ``temporal_patch_size x patch_size x patch_size``
   patches, ordered so that every ``spatial_merge_size x spatial_merge_size``
   block of neighbouring patches is contiguous. The tower embeds the patches
   (a 3D convolution, computed as one matrix product), runs blocks of
   bidirectional attention inside each frame with 2D rotary positions (half
   of each head rotates with the patch row, half with its column), and the
   patch merger concatenates each block of neighbours and projects it to the
   decoder's width: one vision token per block.
2. Multimodal rotary positions. Every token gets three positions (temporal,
   height, width). Text tokens use the same value three times, counting on
   from the previous segment; the tokens of an image or video use their
   frame, row and column in the merged grid, offset by where the segment
   starts. Each head's rotary frequencies are split into three sections
   (``mrope_section``) driven by the three positions. ``get_rope_index``
   computes these positions; ``rope_deltas`` (last position + 1 - length)
   continue them for generated tokens.
3. The decoder is bestiary's Qwen2 stack (:mod:`bestiary_text.modeling_qwen2`)
   with the multimodal rotary embedding in place of the 1D one.
4. ``Qwen2VLModel`` embeds the text, runs the tower and writes its tokens
   over the image / video placeholder tokens, computes positions, and runs the
   decoder. ``Qwen2VLForConditionalGeneration`` adds the LM head and
   generation through the core engine; positions and their offsets are
   computed for each ``generate()`` call from that call's inputs, never kept
   on the model.

Differences from transformers 5.24, on purpose: ``mm_token_type_ids`` is
accepted but never required (token types come from the placeholder ids);
adjacent images without a separator are told apart by their grid sizes; and
text after a video continues from the largest position used by the video
(temporal included), as the original Qwen2-VL code does, where transformers
5.24 skips the temporal extent.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.config import Config
from bestiary.errors import ConfigError, ProcessingError
from bestiary.generation.cache import Cache
from bestiary.generation.mixin import GenerationMixin
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.nn.norms import RMSNorm
from bestiary.nn.rope import compute_inv_freq, rotate_half
from bestiary.outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from bestiary_qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig, Qwen2VLTextConfig, Qwen2VLVisionConfig
from bestiary_text.modeling_llama import causal_lm_loss
from bestiary_text.modeling_qwen2 import Qwen2Model

logger = logging.getLogger(__name__)

TEXT, IMAGE, VIDEO = 0, 1, 2
_MODALITY_NAMES = {IMAGE: "image", VIDEO: "video"}


# -- outputs ---------------------------------------------------------------------
@dataclass
class Qwen2VLModelOutputWithPast(BaseModelOutputWithPast):
    """Decoder output plus ``rope_deltas`` [batch, 1]: add them to text positions to continue the sequence."""

    rope_deltas: Any = None


@dataclass
class Qwen2VLCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Logits (and loss) plus ``rope_deltas`` [batch, 1], as :class:`Qwen2VLModelOutputWithPast`."""

    rope_deltas: Any = None


# -- the vision tower --------------------------------------------------------------
def vision_rotary_positions(grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Return the (row, column) of every patch [patches, 2], in the processor's merge-block order.

    Frames of a video repeat the positions of the first frame.
    """
    positions = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge_size, merge_size, 1, 1).expand(-1, -1, w // merge_size, merge_size)
        cols = torch.arange(w).view(1, 1, w // merge_size, merge_size).expand(h // merge_size, merge_size, -1, -1)
        # merge blocks are contiguous: [block row, block col, row in block, col in block]
        rows = rows.permute(0, 2, 1, 3).reshape(-1)
        cols = cols.permute(0, 2, 1, 3).reshape(-1)
        positions.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
    return torch.cat(positions).to(grid_thw.device)


def frame_lengths(grid_thw: torch.Tensor) -> list[int]:
    """Patches per attention segment: each frame of each image or video attends only within itself."""
    return [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]


class Qwen2VLVisionRotaryEmbedding(nn.Module):
    """2D rotary angles: the first half of a head turns with the patch row, the second with the column."""

    def __init__(self, config: Qwen2VLVisionConfig) -> None:
        super().__init__()
        quarter = config.head_dim // 2  # frequencies per axis cover half the head, each used twice
        theta = float(config.rope_parameters["rope_theta"])
        exponents = torch.arange(0, quarter, 2, dtype=torch.int64, device="cpu").float() / quarter
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistent=False)

    @torch.no_grad()
    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin) [patches, head_dim] in float32 for (row, column) ``positions`` [patches, 2]."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # [patches, 2, head_dim / 4]
        angles = freqs.flatten(1)  # rows then columns
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


class Qwen2VLPatchEmbed(nn.Module):
    """Linear embedding of flattened (channel, time, row, column) patches; stored as transformers' Conv3d."""

    def __init__(self, config: Qwen2VLVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.embed_dim
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        patches = pixel_values.reshape(-1, self.patch_dim).to(weight.dtype)
        return F.linear(patches, weight.reshape(self.embed_dim, -1))


class Qwen2VLVisionMLP(nn.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden_dim: int, hidden_act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = get_activation(hidden_act)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _rotate_vision(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate [patches, heads, dim] queries and keys in float32 (as the reference does), keeping their dtype."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q, k = query.float(), key.float()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.to(query.dtype), k.to(key.dtype)


class Qwen2VLVisionAttention(nn.Module):
    """Bidirectional attention within each frame (segments of ``frame_lengths``)."""

    def __init__(self, config: Qwen2VLVisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=True)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, segments: Sequence[int], rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        length = hidden_states.shape[0]
        query, key, value = self.qkv(hidden_states).view(length, 3, self.num_heads, self.head_dim).unbind(1)
        query, key = _rotate_vision(query, key, *rotary)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # [heads, patches, dim]
        outputs, start = [], 0
        for size, group in itertools.groupby(segments):  # equal-sized neighbouring frames attend in one batch
            count = len(list(group))
            end = start + size * count
            q, k, v = (t[:, start:end].reshape(self.num_heads, count, size, -1).transpose(0, 1) for t in (query, key, value))
            attended = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)  # [count, heads, size, dim]
            outputs.append(attended.transpose(0, 1).reshape(self.num_heads, size * count, -1))
            start = end
        attended = torch.cat(outputs, dim=1).transpose(0, 1).reshape(length, -1)
        return self.proj(attended)


class Qwen2VLVisionBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: Qwen2VLVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.attn = Qwen2VLVisionAttention(config)
        self.mlp = Qwen2VLVisionMLP(config.embed_dim, int(config.embed_dim * config.mlp_ratio), config.hidden_act)

    def forward(
        self, hidden_states: torch.Tensor, segments: Sequence[int], rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), segments, rotary)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class Qwen2VLPatchMerger(nn.Module):
    """Concatenate each ``merge x merge`` block of patches and project it to the decoder's width."""

    def __init__(self, dim: int, context_dim: int, spatial_merge_size: int) -> None:
        super().__init__()
        self.hidden_size = context_dim * spatial_merge_size**2
        self.ln_q = nn.LayerNorm(context_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.hidden_size, self.hidden_size), nn.GELU(), nn.Linear(self.hidden_size, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.hidden_size))


class Qwen2VLPreTrainedModel(PreTrainedModel):
    """Shared loading, saving and initialisation of Qwen2-VL models."""

    config_class = Qwen2VLConfig
    base_model_prefix = "model"

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None:
        """Save in transformers' format; like transformers, each sub-config records the weights' dtype too."""
        subs = [getattr(self.config, name, None) for name in ("text_config", "vision_config")]
        subs = [sub for sub in subs if isinstance(sub, Config) and sub.dtype is None]
        for sub in subs:
            sub.__dict__["dtype"] = str(self.dtype).replace("torch.", "")
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            for sub in subs:
                sub.__dict__["dtype"] = None

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Conv3d):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class Qwen2VisionTransformerPretrainedModel(Qwen2VLPreTrainedModel):
    """The vision tower: patches [patches, patch_dim] and grids [items, 3] in, vision tokens out.

    Returns a :class:`BaseModelOutputWithPooling` whose ``last_hidden_state``
    holds the patch features before merging and ``pooler_output`` the merged
    vision tokens [patches / merge**2, decoder width].
    """

    config_class = Qwen2VLVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: Qwen2VLVisionConfig) -> None:
        super().__init__(config)
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_embed = Qwen2VLPatchEmbed(config)
        self.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(config)
        self.blocks = nn.ModuleList(Qwen2VLVisionBlock(config) for _ in range(config.depth))
        self.merger = Qwen2VLPatchMerger(config.hidden_size, config.embed_dim, config.spatial_merge_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def forward(
        self,
        hidden_states: torch.Tensor,
        grid_thw: torch.Tensor,
        output_hidden_states: bool = False,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Encode the patches of the items described by ``grid_thw`` (see the class docstring)."""
        grid_thw = _check_grids(grid_thw, "grid_thw", self.spatial_merge_size)
        expected = int(grid_thw.prod(-1).sum())
        if hidden_states.shape[0] != expected:
            raise ProcessingError(
                f"The vision tower got {hidden_states.shape[0]} patches but grid_thw {grid_thw.tolist()} describes "
                f"{expected}. Pass pixel values and grids from the same image processor call."
            )
        segments = frame_lengths(grid_thw)
        hidden_states = self.patch_embed(hidden_states)
        rotary = self.rotary_pos_emb(vision_rotary_positions(grid_thw, self.spatial_merge_size).to(hidden_states.device))
        all_hidden = []
        for block in self.blocks:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states = block(hidden_states, segments, rotary)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.merger(hidden_states),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )


def _check_grids(grid_thw: Any, name: str, merge_size: int) -> torch.Tensor:
    grid = torch.as_tensor(grid_thw)
    if grid.dim() != 2 or grid.shape[-1] != 3:
        raise ProcessingError(
            f"{name} must be [items, 3] (frames, rows, columns of patches), got shape {tuple(grid.shape)}."
        )
    if bool((grid[:, 1:] % merge_size != 0).any()) or bool((grid <= 0).any()):
        raise ProcessingError(
            f"{name} {grid.tolist()} has rows or columns that are not positive multiples of spatial_merge_size "
            f"({merge_size}); build it with this model's image processor."
        )
    return grid.long()


# -- multimodal rotary positions and the decoder ---------------------------------------
class Qwen2VLMultimodalRotaryEmbedding(nn.Module):
    """Rotary (cos, sin) for [3, batch, length] positions: each frequency section follows one axis."""

    def __init__(self, config: Qwen2VLTextConfig) -> None:
        super().__init__()
        rope_type = config.rope_parameters["rope_type"]
        if rope_type in {"dynamic", "longrope"}:
            raise ConfigError(
                f"text_config.rope_parameters.rope_type {rope_type!r} is not supported with multimodal positions; "
                "Qwen2-VL uses 'default'."
            )
        inv_freq, self.attention_scaling = compute_inv_freq(
            config.rope_parameters, config.head_dim, config.max_position_embeddings
        )
        self.register_buffer("inv_freq", inv_freq.to("cpu"), persistent=False)
        self.mrope_section = config.mrope_section

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [batch, length, head_dim]; 2D ``position_ids`` mean text (the same position on each axis)."""
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        sections = freqs.split(self.mrope_section, dim=-1)
        freqs = torch.cat([section[axis % 3] for axis, section in enumerate(sections)], dim=-1)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos() * self.attention_scaling
        sin = angles.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


class Qwen2VLTextModel(Qwen2Model):
    """The Qwen2 decoder of Qwen2-VL; accepts [3, batch, length] (or 2D) ``position_ids``."""

    config_class = Qwen2VLTextConfig

    def __init__(self, config: Qwen2VLTextConfig) -> None:
        super().__init__(config)
        self.rotary_emb = Qwen2VLMultimodalRotaryEmbedding(config)


# -- the model ------------------------------------------------------------------------
class Qwen2VLModel(Qwen2VLPreTrainedModel):
    """Vision tower + decoder: merges vision tokens at their placeholders and computes M-RoPE positions."""

    # Older checkpoints name the decoder "model.*"; transformers 5 saves this class as "language_model.*".
    _checkpoint_key_renames = [(r"^model\.(?!language_model\.|visual\.)", "language_model.")]
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"rotary_emb\.inv_freq"]

    def __init__(self, config: Qwen2VLConfig) -> None:
        super().__init__(config)
        config.check_model_widths()
        self.visual = Qwen2VisionTransformerPretrainedModel(config.vision_config)
        self.language_model = Qwen2VLTextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    @property
    def spatial_merge_size(self) -> int:
        """Patches per side merged into one vision token."""
        return self.config.vision_config.spatial_merge_size

    # -- vision features ------------------------------------------------------------------
    def _vision_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, name: str) -> BaseModelOutputWithPooling:
        grid_thw = _check_grids(grid_thw, name, self.spatial_merge_size).to(pixel_values.device)
        output = self.visual(pixel_values.to(self.visual.patch_embed.proj.weight.dtype), grid_thw=grid_thw)
        sizes = (grid_thw.prod(-1) // self.spatial_merge_size**2).tolist()
        output.pooler_output = torch.split(output.pooler_output, sizes)
        return output

    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Run the tower on images; ``pooler_output`` is a tuple of [tokens, width] tensors, one per image."""
        if image_grid_thw is None:
            raise ProcessingError("get_image_features needs image_grid_thw (returned with pixel_values by the processor).")
        return self._vision_features(pixel_values, image_grid_thw, "image_grid_thw")

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Run the tower on videos; ``pooler_output`` is a tuple of [tokens, width] tensors, one per video."""
        if video_grid_thw is None:
            raise ProcessingError("get_video_features needs video_grid_thw (returned with pixel_values_videos).")
        return self._vision_features(pixel_values_videos, video_grid_thw, "video_grid_thw")

    def embed_multimodal(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return token embeddings [batch, length, width] with vision tokens written over their placeholders."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.language_model.embed_tokens(input_ids)
        items = (
            (IMAGE, pixel_values, image_grid_thw, self.get_image_features),
            (VIDEO, pixel_values_videos, video_grid_thw, self.get_video_features),
        )
        for modality, pixels, grids, encode in items:
            if pixels is None:
                continue
            features = torch.cat(encode(pixels, grids).pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            placeholder = self._placeholder_mask(input_ids, inputs_embeds, modality)
            found = int(placeholder.sum())
            if found != features.shape[0]:
                name = _MODALITY_NAMES[modality]
                token = self.config.image_token_id if modality == IMAGE else self.config.video_token_id
                raise ProcessingError(
                    f"The inputs hold {found} {name} placeholder tokens (id {token}) but the {name}s give "
                    f"{features.shape[0]} vision tokens (grids {torch.as_tensor(grids).tolist()}). Build the inputs "
                    f"with the processor, which expands each {name} placeholder to its {name}'s token count."
                )
            inputs_embeds = inputs_embeds.masked_scatter(placeholder.unsqueeze(-1), features)
        return inputs_embeds

    def _placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, modality: int) -> torch.Tensor:
        token = self.config.image_token_id if modality == IMAGE else self.config.video_token_id
        if input_ids is not None:
            return (input_ids == token).to(inputs_embeds.device)
        reference = self.language_model.embed_tokens(torch.tensor(token, device=inputs_embeds.device))
        return (inputs_embeds == reference.to(inputs_embeds.dtype)).all(-1)

    # -- positions ---------------------------------------------------------------------
    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return M-RoPE positions [3, batch, length] and ``rope_deltas`` [batch, 1] for a prompt.

        Token types come from the placeholder ids (or ``mm_token_type_ids``
        when given: 0 text, 1 image, 2 video). Padding (``attention_mask`` 0)
        is skipped and gets position 0. Each run of placeholders takes the
        next image (or video) grid, in order; a run holding several items
        back to back is split by their token counts.
        """
        merge = self.spatial_merge_size
        if mm_token_type_ids is not None and tuple(mm_token_type_ids.shape) == tuple(input_ids.shape):
            types = mm_token_type_ids.to(input_ids.device).long()
        else:
            types = torch.zeros_like(input_ids)
            types[input_ids == self.config.image_token_id] = IMAGE
            types[input_ids == self.config.video_token_id] = VIDEO
        grids = {
            IMAGE: [] if image_grid_thw is None else _check_grids(image_grid_thw, "image_grid_thw", merge).tolist(),
            VIDEO: [] if video_grid_thw is None else _check_grids(video_grid_thw, "video_grid_thw", merge).tolist(),
        }
        used = {IMAGE: 0, VIDEO: 0}
        batch, length = input_ids.shape
        positions = torch.zeros(3, batch, length, dtype=torch.long, device=input_ids.device)
        deltas = []
        for row in range(batch):
            keep = attention_mask[row].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
            keep = keep.to(input_ids.device)
            row_types = types[row][keep].tolist()
            chunks, next_position = [], 0
            for kind, run in itertools.groupby(row_types):
                count = len(list(run))
                if kind == TEXT:
                    chunks.append(torch.arange(next_position, next_position + count).expand(3, -1))
                    next_position += count
                    continue
                while count > 0:
                    grid, used[kind] = _next_grid(grids[kind], used[kind], kind, row), used[kind] + 1
                    block, next_position = _vision_block_positions(grid, merge, next_position)
                    if block.shape[1] > count:
                        name = _MODALITY_NAMES[kind]
                        raise ProcessingError(
                            f"Row {row}: {name} {used[kind]} (grid {grid}) needs {block.shape[1]} placeholder tokens but "
                            f"its run has only {count} left. Build the inputs with the processor so each {name} "
                            "placeholder is expanded to its token count, and do not truncate inside it."
                        )
                    chunks.append(block)
                    count -= block.shape[1]
            row_positions = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)
            positions[:, row, keep] = row_positions.to(positions.device)
            deltas.append(next_position - len(row_types))
        for kind, grid_list in grids.items():
            if used[kind] != len(grid_list):
                name = _MODALITY_NAMES[kind]
                raise ProcessingError(
                    f"{len(grid_list)} {name}(s) were given but the input_ids hold placeholders for {used[kind]}. "
                    f"Put one {name} placeholder in the text per {name} (the processor's chat template does this)."
                )
        return positions, torch.tensor(deltas, dtype=torch.long, device=input_ids.device).unsqueeze(1)

    def _positions(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
        mm_token_type_ids: torch.Tensor | None,
        rope_deltas: torch.Tensor | None,
        cache: Cache | None,
        cache_position: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions [3, batch, length] when ``position_ids`` were not given, and the deltas they imply."""
        batch, length = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        start = int(cache_position[0]) if cache_position is not None and cache_position.numel() else past
        has_vision = image_grid_thw is not None or video_grid_thw is not None
        if start == 0 and input_ids is not None and has_vision:
            positions, deltas = self.get_rope_index(
                input_ids, image_grid_thw, video_grid_thw, attention_mask, mm_token_type_ids
            )
            _record_deltas(cache, deltas)
            return positions, deltas
        if start == 0:
            _record_deltas(cache, None)  # a new sequence in this cache: forget the offsets of an earlier one
        if rope_deltas is None and start > 0 and cache is not None:
            rope_deltas = getattr(cache, "_bestiary_rope_deltas", None)
        text = torch.arange(start, start + length, device=inputs_embeds.device).expand(batch, -1)
        if rope_deltas is None:
            return text.unsqueeze(0).expand(3, -1, -1), None
        if attention_mask is not None and attention_mask.shape[1] >= start + length:
            text = (attention_mask.long().cumsum(-1) - 1)[:, start : start + length].clamp(min=0)
        deltas = rope_deltas.to(text.device)
        if deltas.shape[0] != batch:
            deltas = deltas.repeat_interleave(batch // max(deltas.shape[0], 1), dim=0)
        return (text + deltas).unsqueeze(0).expand(3, -1, -1), rope_deltas

    # -- forward --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> Qwen2VLModelOutputWithPast:
        """Run the decoder over text with images and videos merged in.

        ``position_ids`` may be [batch, length] (text), [3, batch, length]
        (M-RoPE) or [4, batch, length] (transformers' text row + M-RoPE);
        when absent they are computed from the prompt (``get_rope_index``), or
        continue a cached prompt with ``rope_deltas`` (given, or recorded on the
        cache when the prompt was run). ``mm_token_type_ids`` is optional.
        """
        past = past_key_values if past_key_values is not None else cache
        if (pixel_values is not None or pixel_values_videos is not None) and input_ids is None and inputs_embeds is None:
            raise ValueError("Pass input_ids (with placeholder tokens) together with pixel_values.")
        embeds = self.embed_multimodal(
            input_ids, inputs_embeds, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
        )
        deltas = rope_deltas
        if position_ids is None:
            position_ids, deltas = self._positions(
                input_ids, embeds, attention_mask, image_grid_thw, video_grid_thw, mm_token_type_ids,
                rope_deltas, past, cache_position,
            )
        elif position_ids.dim() == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        outputs = self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        return Qwen2VLModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=deltas,
        )


def _record_deltas(cache: Cache | None, deltas: torch.Tensor | None) -> None:
    """Remember a prompt's offsets on its cache, so a manual decoding loop can continue it (per sequence)."""
    if cache is None:
        return
    try:
        cache._bestiary_rope_deltas = deltas
    except AttributeError:  # a cache class with __slots__: callers pass rope_deltas themselves
        logger.debug("Cannot record rope_deltas on %s; pass rope_deltas= when continuing.", type(cache).__name__)


def _next_grid(grids: list[list[int]], used: int, kind: int, row: int) -> list[int]:
    if used >= len(grids):
        name = _MODALITY_NAMES[kind]
        raise ProcessingError(
            f"Row {row} of input_ids holds more {name} placeholders than the {len(grids)} {name}(s) given. "
            f"Give one {name} per placeholder, and build inputs with the processor."
        )
    return grids[used]


def _vision_block_positions(grid: list[int], merge: int, start: int) -> tuple[torch.Tensor, int]:
    """Positions [3, tokens] of one image or video starting at ``start``, and the next free position."""
    frames, rows, cols = grid[0], grid[1] // merge, grid[2] // merge
    t = torch.arange(frames).view(-1, 1, 1).expand(frames, rows, cols)
    h = torch.arange(rows).view(1, -1, 1).expand(frames, rows, cols)
    w = torch.arange(cols).view(1, 1, -1).expand(frames, rows, cols)
    block = torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)]) + start
    return block, start + max(frames, rows, cols)


# -- the generation head ----------------------------------------------------------------
class Qwen2VLForConditionalGeneration(Qwen2VLPreTrainedModel, GenerationMixin):
    """Qwen2-VL with its language-modelling head: images, videos and text in, next-token logits out.

    Checkpoints are read and written in transformers' on-disk layout
    (``visual.*``, ``model.*`` for the decoder, ``lm_head.*``); the module tree
    follows transformers 5 (``model.visual``, ``model.language_model``).
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _checkpoint_key_renames = [
        (r"^visual\.", "model.visual."),
        (r"^model\.(?!language_model\.|visual\.)", "model.language_model."),
    ]
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]
    # generate() computes these per call (see _prefill_vision); the engine passes them back to each step
    _extra_generation_inputs = ("mrope_position_ids",)

    def __init__(self, config: Qwen2VLConfig) -> None:
        super().__init__(config)
        self.model = Qwen2VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _should_tie(self) -> bool:
        return bool(self.config.tie_word_embeddings)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.language_model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def visual(self) -> Qwen2VisionTransformerPretrainedModel:
        """The vision tower (``model.visual``)."""
        return self.model.visual

    @property
    def language_model(self) -> Qwen2VLTextModel:
        """The decoder (``model.language_model``)."""
        return self.model.language_model

    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ):
        """See :meth:`Qwen2VLModel.get_image_features`."""
        return self.model.get_image_features(pixel_values, image_grid_thw)

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ):
        """See :meth:`Qwen2VLModel.get_video_features`."""
        return self.model.get_video_features(pixel_values_videos, video_grid_thw)

    def get_rope_index(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Qwen2VLModel.get_rope_index`."""
        return self.model.get_rope_index(*args, **kwargs)

    def _state_dict_for_saving(self, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        tensors = super()._state_dict_for_saving(state_dict)
        return {_checkpoint_name(name): tensor for name, tensor in tensors.items()}

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> Qwen2VLCausalLMOutputWithPast:
        """Next-token logits (and the shifted cross-entropy when ``labels`` are given); see :meth:`Qwen2VLModel.forward`."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values if past_key_values is not None else cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            rope_deltas=rope_deltas,
            mm_token_type_ids=mm_token_type_ids,
            cache_position=cache_position,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            kept = hidden_states[:, -logits_to_keep:, :] if logits_to_keep > 0 else hidden_states
        else:
            kept = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(kept)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return Qwen2VLCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=outputs.rope_deltas,
        )

    # -- generation -------------------------------------------------------------------
    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Generate with the core engine (see :meth:`GenerationMixin.generate`); takes the processor's outputs.

        Vision inputs are encoded once per call and their M-RoPE positions and
        offsets computed from this call's prompt, so consecutive calls never
        share state.
        """
        inputs, kwargs = self._prefill_vision(inputs, kwargs)
        return super().generate(inputs, generation_config, *args, **kwargs)

    def generate_stream(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any):
        """Stream generation steps (see :meth:`GenerationMixin.generate_stream`); takes the processor's outputs."""
        inputs, kwargs = self._prefill_vision(inputs, kwargs)
        return super().generate_stream(inputs, generation_config, **kwargs)

    @torch.no_grad()
    def _prefill_vision(self, inputs: torch.Tensor | None, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Replace vision inputs by merged prompt embeddings, their M-RoPE positions and offsets (per call).

        Everything produced has the batch as its first dimension, so the
        engine expands it for beams and several return sequences, and
        reorders it for beam search, like any per-row input.
        """
        kwargs = dict(kwargs)
        type_ids = kwargs.pop("mm_token_type_ids", None)
        pixel_values = kwargs.pop("pixel_values", None)
        pixel_values_videos = kwargs.pop("pixel_values_videos", None)
        image_grid_thw = kwargs.pop("image_grid_thw", None)
        video_grid_thw = kwargs.pop("video_grid_thw", None)
        if pixel_values is None and pixel_values_videos is None:
            if image_grid_thw is not None or video_grid_thw is not None:
                raise ProcessingError("image_grid_thw / video_grid_thw were given without pixel_values; pass both.")
            return inputs, kwargs
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if input_ids is None:
            raise ProcessingError("generate() with pixel_values needs input_ids holding the vision placeholder tokens.")
        device = self.device
        input_ids = input_ids.to(device)
        mask = kwargs.get("attention_mask")
        embeds = self.model.embed_multimodal(
            input_ids,
            kwargs.pop("inputs_embeds", None),
            pixel_values.to(device) if pixel_values is not None else None,
            image_grid_thw,
            pixel_values_videos.to(device) if pixel_values_videos is not None else None,
            video_grid_thw,
        )
        positions, deltas = self.model.get_rope_index(
            input_ids, image_grid_thw, video_grid_thw, mask.to(device) if mask is not None else None, type_ids
        )
        kwargs.update(inputs_embeds=embeds, mrope_position_ids=positions.permute(1, 0, 2), rope_deltas=deltas)
        return inputs, kwargs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        *,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        is_first_step: bool = False,
        use_cache: bool = True,
        **model_kwargs: Any,
    ) -> dict[str, Any]:
        """Inputs of one forward over the unseen tokens ``input_ids``.

        Tokens of the prompt take their precomputed embeddings (vision merged
        in) and M-RoPE positions; generated tokens take the engine's text
        positions plus this call's ``rope_deltas``. Works with and without a
        cache (without one, every step re-reads the whole sequence).
        """
        prompt_embeds = model_kwargs.pop("inputs_embeds", None)
        prompt_positions = model_kwargs.pop("mrope_position_ids", None)  # [batch, 3, prompt length]
        deltas = model_kwargs.pop("rope_deltas", None)
        for name in self._prefill_only_generation_inputs:
            if not is_first_step:
                model_kwargs.pop(name, None)
        count = input_ids.shape[1]
        start = int(cache_position[0]) if cache_position is not None else 0
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "cache_position": cache_position,
            "use_cache": use_cache,
            **model_kwargs,
        }
        prompt_length = prompt_positions.shape[-1] if prompt_positions is not None else 0
        if prompt_positions is None:
            inputs["position_ids"] = position_ids
            if prompt_embeds is not None and is_first_step:  # plain inputs_embeds given by the user
                inputs["inputs_embeds"] = prompt_embeds[:, -count:]
                inputs["input_ids"] = None
            return inputs
        in_prompt = max(0, min(prompt_length - start, count))
        parts = []
        if in_prompt:
            parts.append(prompt_positions[:, :, start : start + in_prompt].permute(1, 0, 2))
        if in_prompt < count:
            generated = position_ids[:, in_prompt:] + deltas.to(position_ids.device)
            parts.append(generated.unsqueeze(0).expand(3, -1, -1))
        inputs["position_ids"] = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if in_prompt and prompt_embeds is not None:
            embeds = prompt_embeds[:, start : start + in_prompt]
            if in_prompt < count:
                embeds = torch.cat([embeds, self.get_input_embeddings()(input_ids[:, in_prompt:])], dim=1)
            inputs["inputs_embeds"] = embeds
            inputs["input_ids"] = None
        return inputs


def _checkpoint_name(name: str) -> str:
    """transformers' on-disk name of a parameter of :class:`Qwen2VLForConditionalGeneration`."""
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name
