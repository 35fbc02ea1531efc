"""SAM (Segment Anything): image encoder, prompt encoder and two-way transformer mask decoder.

Read from top to bottom:

1. the image encoder: a ViT over 16x16 patches whose blocks attend inside
   non-overlapping windows, except a few global blocks; attention logits get
   decomposed relative-position terms (one table per axis); a convolutional
   neck maps the tokens to the image embedding (``output_channels`` x 64 x 64
   for the released models);
2. the prompt encoder: points and box corners become random-Fourier
   positional encodings plus a learned embedding per kind (negative point,
   positive point, top-left, bottom-right); a low-resolution mask becomes a
   dense embedding through a small conv stack (or the learned "no mask"
   embedding is broadcast);
3. the mask decoder: output tokens (an IoU token and one token per mask) and
   the prompt tokens attend to the image embedding and back (two-way
   transformer), then each mask token, through a small MLP, weighs the
   channels of the 4x upscaled image embedding to give one mask; the IoU
   token predicts each mask's quality.

Tensor names equal transformers' so checkpoints move both ways unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from bestiary.errors import ProcessingError
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.outputs import ModelOutput
from torch import nn
from torch.nn import functional as F

from bestiary_sam.configuration_sam import (
    SamConfig,
    SamMaskDecoderConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

logger = logging.getLogger(__name__)

# Point labels: 1 foreground, 0 background, -1 "not a point" (the pad SAM adds
# when there is no box), -10 padding added by the processor (ignored).
LABEL_PADDING = -10
LABEL_NOT_A_POINT = -1


@dataclass
class SamImageSegmentationOutput(ModelOutput):
    """Masks and their predicted IoU for every prompt.

    ``iou_scores``: (batch, prompts, masks). ``pred_masks``: low-resolution
    mask logits (batch, prompts, masks, 4 * embedding size, same); upscale
    them with ``SamProcessor.post_process_masks``.
    """

    iou_scores: Any = None
    pred_masks: Any = None
    vision_hidden_states: tuple | None = None
    vision_attentions: tuple | None = None
    mask_decoder_attentions: tuple | None = None


class SamLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first (N, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SamMLPBlock(nn.Module):
    """Two linear layers with an activation between them."""

    def __init__(self, hidden_size: int, mlp_dim: int, activation: str) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden_size, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, hidden_size)
        self.act = get_activation(activation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(hidden_states)))


# -- 1. image encoder -------------------------------------------------------------
class SamPatchEmbeddings(nn.Module):
    """(N, 3, H, W) pixels to (N, H/p, W/p, hidden) patch tokens with one strided convolution."""

    def __init__(self, config: SamVisionConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ProcessingError(
                f"pixel_values must have shape (batch, {self.num_channels}, {self.image_size}, {self.image_size}); "
                f"got {tuple(pixel_values.shape)}. Prepare images with SamProcessor / SamImageProcessor."
            )
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ProcessingError(
                f"pixel_values are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but this SAM takes "
                f"{self.image_size}x{self.image_size} (resized longest side, then padded). Use SamImageProcessor "
                f"with size={{'longest_edge': {self.image_size}}} and pad_size of {self.image_size}x{self.image_size}."
            )
        return self.projection(pixel_values).permute(0, 2, 3, 1)


def relative_position_table(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Return the (q_size, k_size, C) embeddings of every query-key offset along one axis.

    ``table`` holds one row per offset, ``2 * size - 1`` rows; it is linearly
    resized when the attended size differs from the one it was trained for.
    When query and key lengths differ, the shorter axis is stretched.
    """
    span = 2 * max(q_size, k_size) - 1
    if table.shape[0] != span:
        table = F.interpolate(table.T.unsqueeze(0), size=span, mode="linear").squeeze(0).T
    q_coords = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=table.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[offsets.long()]


class SamVisionAttention(nn.Module):
    """Multi-head self-attention over a 2-D grid of tokens with decomposed relative positions.

    The logit between query (i, j) and key (k, l) gets ``q . Rh[i - k] +
    q . Rw[j - l]`` added, with one learned table per axis.
    """

    def __init__(self, config: SamVisionConfig, window_size: int) -> None:
        super().__init__()
        size = config.grid_size if window_size == 0 else window_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.attn_implementation = "sdpa"
        self.qkv = nn.Linear(config.hidden_size, config.hidden_size * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.use_rel_pos = config.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))

    def relative_position_bias(self, query: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Return the (B*heads, H*W, H*W) additive logits of relative positions for ``query`` (B*heads, H*W, C)."""
        table_h = relative_position_table(height, height, self.rel_pos_h)
        table_w = relative_position_table(width, width, self.rel_pos_w)
        grid_query = query.reshape(query.shape[0], height, width, -1)
        bias_h = torch.einsum("bhwc,hkc->bhwk", grid_query, table_h)
        bias_w = torch.einsum("bhwc,wkc->bhwk", grid_query, table_w)
        bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
        return bias.reshape(query.shape[0], height * width, height * width)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over (B, H, W, C) tokens; return the output and, when asked, the attention weights."""
        batch, height, width, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
        bias = self.relative_position_bias(query, height, width) if self.use_rel_pos else None
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions or self.attn_implementation == "eager":
            logits = (query * self.scale) @ key.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            weights = logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
            output = F.dropout(weights, p=dropout, training=self.training) @ value
            weights = weights.reshape(batch, self.num_heads, height * width, height * width)
        else:
            output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        output = output.reshape(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(output.reshape(batch, height, width, -1)), weights


def window_partition(tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut (B, H, W, C) tokens into (B * windows, window, window, C), zero-padding H and W to multiples of ``window``."""
    batch, height, width, channels = tokens.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    tokens = tokens.reshape(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = tokens.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], original: tuple[int, int]
) -> torch.Tensor:
    """Undo :func:`window_partition`: reassemble (B, H, W, C) tokens and drop the padding."""
    padded_h, padded_w = padded
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    tokens = windows.reshape(batch, padded_h // window, padded_w // window, window, window, -1)
    tokens = tokens.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return tokens[:, : original[0], : original[1], :].contiguous()


class SamVisionLayer(nn.Module):
    """Pre-norm transformer block; attention runs inside windows when ``window_size`` > 0, else globally."""

    def __init__(self, config: SamVisionConfig, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SamVisionAttention(config, window_size)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SamMLPBlock(config.hidden_size, config.mlp_dim, config.hidden_act)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        if self.window_size > 0:
            height, width = hidden_states.shape[1:3]
            hidden_states, padded = window_partition(hidden_states, self.window_size)
        hidden_states, weights = self.attn(hidden_states, output_attentions)
        if self.window_size > 0:
            hidden_states = window_unpartition(hidden_states, self.window_size, padded, (height, width))
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.layer_norm2(hidden_states)), weights


class SamVisionNeck(nn.Module):
    """1x1 conv, LayerNorm, 3x3 conv, LayerNorm: encoder tokens to the (N, output_channels, h, w) image embedding."""

    def __init__(self, config: SamVisionConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = SamLayerNorm(config.output_channels)
        self.conv2 = nn.Conv2d(config.output_channels, config.output_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = SamLayerNorm(config.output_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm1(self.conv1(hidden_states.permute(0, 3, 1, 2)))
        return self.layer_norm2(self.conv2(hidden_states))


@dataclass
class SamVisionEncoderOutput(ModelOutput):
    """The image embedding, and per-layer states and attentions when asked for."""

    last_hidden_state: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


class SamVisionEncoder(nn.Module):
    """Patch embedding, absolute positions, windowed/global blocks and the neck."""

    def __init__(self, config: SamVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = SamPatchEmbeddings(config)
        self.pos_embed = None
        if config.use_abs_pos:
            grid = config.grid_size
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.hidden_size))
        self.layers = nn.ModuleList(
            SamVisionLayer(config, 0 if index in config.global_attn_indexes else config.window_size)
            for index in range(config.num_hidden_layers)
        )
        self.neck = SamVisionNeck(config)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> SamVisionEncoderOutput:
        hidden_states = self.patch_embed(pixel_values)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed
        all_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, output_attentions)
            if all_states is not None:
                all_states.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(weights)
        return SamVisionEncoderOutput(
            last_hidden_state=self.neck(hidden_states),
            hidden_states=tuple(all_states) if all_states is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
        )


# -- 2. prompt encoder -------------------------------------------------------------
class SamPositionalEmbedding(nn.Module):
    """Random Fourier features of 2-D coordinates: ``[sin(2 pi (2c - 1) G), cos(...)]`` with a learned G."""

    def __init__(self, config: SamVisionConfig) -> None:
        super().__init__()
        self.scale = config.scale
        self.positional_embedding = nn.Parameter(self.scale * torch.randn((2, config.num_pos_feats)))

    def forward(self, coordinates: torch.Tensor, input_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Encode (..., 2) (x, y) coordinates; pixel coordinates are first divided by ``input_shape`` (H, W)."""
        if input_shape is not None:
            coordinates = coordinates / torch.tensor(
                [input_shape[1], input_shape[0]], dtype=coordinates.dtype, device=coordinates.device
            )
        projected = (2 * coordinates - 1).to(self.positional_embedding.dtype) @ self.positional_embedding
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)


class SamMaskEmbedding(nn.Module):
    """Downscale a (N, 1, 4h, 4w) mask prompt to a (N, hidden, h, w) dense embedding."""

    def __init__(self, config: SamPromptEncoderConfig) -> None:
        super().__init__()
        quarter = config.mask_input_channels // 4
        self.activation = get_activation(config.hidden_act)
        self.conv1 = nn.Conv2d(1, quarter, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(quarter, config.mask_input_channels, kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(config.mask_input_channels, config.hidden_size, kernel_size=1)
        self.layer_norm1 = SamLayerNorm(quarter, eps=config.layer_norm_eps)
        self.layer_norm2 = SamLayerNorm(quarter * 4, eps=config.layer_norm_eps)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.layer_norm1(self.conv1(masks)))
        hidden_states = self.activation(self.layer_norm2(self.conv2(hidden_states)))
        return self.conv3(hidden_states)


class SamPromptEncoder(nn.Module):
    """Points, boxes and masks to sparse (per-token) and dense (per-pixel) prompt embeddings."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        prompt = config.prompt_encoder_config
        self.shared_embedding = SamPositionalEmbedding(config.vision_config)
        self.mask_embed = SamMaskEmbedding(prompt)
        self.no_mask_embed = nn.Embedding(1, prompt.hidden_size)
        self.point_embed = nn.ModuleList(
            nn.Embedding(1, prompt.hidden_size) for _ in range(prompt.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, prompt.hidden_size)
        self.input_image_size = prompt.image_size
        self.image_embedding_size = prompt.image_embedding_size
        self.hidden_size = prompt.hidden_size

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, P, n, 2) points with (B, P, n) labels to (B, P, n [+1], C) tokens.

        With ``pad`` (no box follows), a "not a point" token is appended, as
        SAM was trained with.
        """
        points = points + 0.5  # to the pixel centre
        if pad:
            points = torch.cat([points, points.new_zeros(*points.shape[:2], 1, 2)], dim=2)
            labels = torch.cat([labels, labels.new_full((*labels.shape[:2], 1), LABEL_NOT_A_POINT)], dim=2)
        size = (self.input_image_size, self.input_image_size)
        embedding = self.shared_embedding(points, size)
        labels = labels[..., None]
        embedding = torch.where(labels == LABEL_NOT_A_POINT, self.not_a_point_embed.weight, embedding)
        embedding = torch.where(labels == LABEL_PADDING, torch.zeros_like(embedding), embedding)
        embedding = torch.where(labels == 0, embedding + self.point_embed[0].weight, embedding)
        return torch.where(labels == 1, embedding + self.point_embed[1].weight, embedding)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, n, 4) x1 y1 x2 y2 boxes to (B, n, 2, C) corner tokens."""
        corners = (boxes + 0.5).reshape(*boxes.shape[:2], 2, 2)
        embedding = self.shared_embedding(corners, (self.input_image_size, self.input_image_size))
        kinds = torch.cat([self.point_embed[2].weight, self.point_embed[3].weight], dim=0)
        return embedding + kinds

    def forward(
        self,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        input_masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return (sparse embeddings or None, dense embeddings)."""
        sparse = None
        batch = 1
        if input_points is not None:
            batch = input_points.shape[0]
            if input_labels is None:
                raise ProcessingError(
                    "input_points were given without input_labels; pass labels (1 foreground, 0 background)."
                )
            sparse = self.embed_points(input_points, input_labels, pad=input_boxes is None)
        if input_boxes is not None:
            batch = input_boxes.shape[0]
            boxes = self.embed_boxes(input_boxes)
            sparse = boxes if sparse is None else torch.cat([sparse, boxes], dim=2)
        if input_masks is not None:
            dense = self.mask_embed(input_masks)
        else:
            size = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, size, size)
        return sparse, dense


# -- 3. mask decoder -------------------------------------------------------------
class SamAttention(nn.Module):
    """Multi-head attention whose queries, keys and values are projected to ``hidden / downsample_rate``.

    Inputs are (B, P, tokens, C): P (prompts per image) is folded into the
    batch for attention.
    """

    def __init__(self, config: SamMaskDecoderConfig, downsample_rate: int | None = None) -> None:
        super().__init__()
        rate = config.attention_downsample_rate if downsample_rate is None else downsample_rate
        self.internal_dim = config.hidden_size // rate
        self.num_heads = config.num_attention_heads
        self.scaling = (self.internal_dim // self.num_heads) ** -0.5
        self.attn_implementation = "sdpa"
        self.q_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, config.hidden_size)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, prompts, tokens, channels = states.shape
        return states.reshape(batch * prompts, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, prompts = query.shape[:2]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        weights = None
        if output_attentions or self.attn_implementation == "eager":
            logits = (q @ k.transpose(-2, -1)) * self.scaling
            if attention_similarity is not None:
                logits = logits + attention_similarity
            weights = logits.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            output = weights @ v
        else:
            output = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_similarity, scale=self.scaling)
        output = output.transpose(1, 2).reshape(batch, prompts, output.shape[2], self.internal_dim)
        return self.out_proj(output), weights


class SamTwoWayAttentionBlock(nn.Module):
    """Tokens self-attend, tokens attend to the image, an MLP on tokens, the image attends to tokens."""

    def __init__(self, config: SamMaskDecoderConfig, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = SamAttention(config, downsample_rate=1)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_token_to_image = SamAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = SamMLPBlock(config.hidden_size, config.mlp_dim, config.hidden_act)
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.layer_norm4 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_image_to_token = SamAttention(config)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.skip_first_layer_pe:
            queries, _ = self.self_attn(queries, queries, queries)
        else:
            query = queries + query_pe
            queries = queries + self.self_attn(query, query, queries)[0]
        queries = self.layer_norm1(queries)

        attended, _ = self.cross_attn_token_to_image(
            queries + query_pe, keys + key_pe, keys, attention_similarity=attention_similarity
        )
        queries = self.layer_norm2(queries + attended)
        queries = self.layer_norm3(queries + self.mlp(queries))

        attended, weights = self.cross_attn_image_to_token(
            keys + key_pe, queries + query_pe, queries, output_attentions=output_attentions
        )
        keys = self.layer_norm4(keys + attended)
        return queries, keys, weights


class SamTwoWayTransformer(nn.Module):
    """Stacked two-way blocks and a last token-to-image attention."""

    def __init__(self, config: SamMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SamTwoWayAttentionBlock(config, skip_first_layer_pe=index == 0) for index in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = SamAttention(config)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size)  # eps 1e-5, as in the released weights

    def forward(
        self,
        point_embeddings: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_positional_embeddings: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Tokens (B, P, n, C) and image maps (B*P, C, h, w); return updated tokens, image tokens and attentions."""
        keys = image_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)
        key_pe = image_positional_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)
        queries = point_embeddings
        attentions = []
        for layer in self.layers:
            if target_embedding is not None:
                queries = queries + target_embedding
            queries, keys, weights = layer(
                queries, keys, point_embeddings, key_pe, attention_similarity, output_attentions
            )
            attentions.append(weights)
        attended, _ = self.final_attn_token_to_image(queries + point_embeddings, keys + key_pe, keys)
        queries = self.layer_norm_final_attn(queries + attended)
        return queries, keys, tuple(attentions)


class SamFeedForward(nn.Module):
    """An MLP of ``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers - 2))
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.relu(self.proj_in(hidden_states))
        for layer in self.layers:
            hidden_states = F.relu(layer(hidden_states))
        return self.proj_out(hidden_states)


class SamMaskDecoder(nn.Module):
    """Predict masks and their IoU from the image embedding and the prompt embeddings."""

    def __init__(self, config: SamMaskDecoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, hidden)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, hidden)
        self.transformer = SamTwoWayTransformer(config)
        self.upscale_conv1 = nn.ConvTranspose2d(hidden, hidden // 4, kernel_size=2, stride=2)
        self.upscale_conv2 = nn.ConvTranspose2d(hidden // 4, hidden // 8, kernel_size=2, stride=2)
        self.upscale_layer_norm = SamLayerNorm(hidden // 4)
        self.activation = nn.GELU()
        self.output_hypernetworks_mlps = nn.ModuleList(
            SamFeedForward(hidden, hidden, hidden // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = SamFeedForward(
            hidden, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_positional_embeddings: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor | None,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Return masks (B, P, M, 4h, 4w), IoU predictions (B, P, M) and the decoder attentions.

        M is ``num_multimask_outputs`` with ``multimask_output``, else 1 (the
        token trained for single, unambiguous prompts).
        """
        batch, channels, height, width = image_embeddings.shape
        prompts = sparse_prompt_embeddings.shape[1] if sparse_prompt_embeddings is not None else 1
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.expand(batch, prompts, -1, -1)
        if sparse_prompt_embeddings is not None:
            tokens = torch.cat([tokens, sparse_prompt_embeddings.to(tokens.dtype)], dim=2)

        image = (image_embeddings + dense_prompt_embeddings).repeat_interleave(prompts, dim=0)
        image_pe = image_positional_embeddings.repeat_interleave(prompts, dim=0)
        tokens, image_tokens, attentions = self.transformer(
            tokens, image, image_pe, attention_similarity, target_embedding, output_attentions
        )
        iou_token_out = tokens[:, :, 0, :]
        mask_tokens_out = tokens[:, :, 1 : 1 + self.num_mask_tokens, :]

        image = image_tokens.transpose(2, 3).reshape(batch * prompts, channels, height, width)
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(image)))
        upscaled = self.activation(self.upscale_conv2(upscaled))
        weights = torch.stack(
            [mlp(mask_tokens_out[:, :, index, :]) for index, mlp in enumerate(self.output_hypernetworks_mlps)], dim=2
        )
        _, up_channels, up_height, up_width = upscaled.shape
        upscaled = upscaled.reshape(batch, prompts, up_channels, up_height * up_width)
        masks = (weights @ upscaled).reshape(batch, prompts, -1, up_height, up_width)
        iou_pred = self.iou_prediction_head(iou_token_out)

        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, :, chosen], iou_pred[:, :, chosen], attentions


# -- the model ---------------------------------------------------------------------
class SamPreTrainedModel(PreTrainedModel):
    """Loading, saving and weight initialisation shared by SAM models."""

    config_class = SamConfig
    base_model_prefix = "sam"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, SamVisionAttention) and module.use_rel_pos:
            module.rel_pos_h.data.zero_()
            module.rel_pos_w.data.zero_()
        elif isinstance(module, SamVisionEncoder) and module.pos_embed is not None:
            module.pos_embed.data.zero_()
        elif isinstance(module, SamPositionalEmbedding):
            module.positional_embedding.data.normal_(0.0, module.scale)


class SamModel(SamPreTrainedModel):
    """Segment Anything: masks and IoU scores for point, box and mask prompts.

    Encode an image once with :meth:`get_image_embeddings` and pass
    ``image_embeddings=`` to prompt it many times. For "segment everything"
    use :meth:`generate_masks` (or :class:`bestiary_sam.automatic.SamAutomaticMaskGenerator`).
    """

    _tied_weights_keys = {
        "prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"
    }

    def __init__(self, config: SamConfig) -> None:
        super().__init__(config)
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)
        self.vision_encoder = SamVisionEncoder(config.vision_config)
        self.prompt_encoder = SamPromptEncoder(config)
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding of the image encoder."""
        return self.vision_encoder.patch_embed

    def get_image_wide_positional_embeddings(self) -> torch.Tensor:
        """Return the (1, C, h, w) positional encoding of every image-embedding cell centre."""
        size = self.config.prompt_encoder_config.image_embedding_size
        table = self.shared_image_embedding.positional_embedding
        centres = (torch.arange(size, device=table.device, dtype=table.dtype) + 0.5) / size
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        encoding = self.shared_image_embedding(torch.stack([x, y], dim=-1))
        return encoding.permute(2, 0, 1).unsqueeze(0)

    @torch.no_grad()
    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the (N, output_channels, h, w) image embeddings of preprocessed ``pixel_values``."""
        return self.vision_encoder(pixel_values).last_hidden_state

    @torch.no_grad()
    def get_prompt_embeddings(
        self,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return the (sparse, dense) prompt embeddings."""
        return self.prompt_encoder(input_points, input_labels, input_boxes, input_masks)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **unused: Any,
    ) -> SamImageSegmentationOutput:
        """Predict masks for the prompts of each image.

        - ``pixel_values`` (B, 3, S, S) or ``image_embeddings`` (B, C, h, w): exactly one.
        - ``input_points`` (B, P, n, 2) in the resized-image frame, with
          ``input_labels`` (B, P, n) (ones when omitted; -10 marks padding).
        - ``input_boxes`` (B, P, 4) x1 y1 x2 y2; with points, P must match.
        - ``input_masks`` (B, 1, 4h, 4w) low-resolution mask logits.
        - ``multimask_output``: three masks per prompt (True) or one.

        Extra keys a processor returns (``original_sizes``,
        ``reshaped_input_sizes``) are accepted and ignored, so ``model(**inputs)`` works.
        """
        unknown = set(unused) - {"original_sizes", "reshaped_input_sizes", "return_dict"}
        if unknown:
            raise TypeError(f"SamModel.forward() got unexpected arguments {sorted(unknown)}.")
        if (pixel_values is None) == (image_embeddings is None):
            raise ProcessingError(
                "Pass exactly one of pixel_values (images prepared by SamProcessor) and image_embeddings "
                "(from model.get_image_embeddings())."
            )
        if input_points is not None and input_points.dim() != 4:
            raise ProcessingError(
                f"input_points must be 4-D (batch, prompts, points per prompt, 2); got shape {tuple(input_points.shape)}. "
                "SamProcessor builds this shape from nested lists."
            )
        if input_boxes is not None and input_boxes.dim() != 3:
            raise ProcessingError(f"input_boxes must be 3-D (batch, boxes, 4); got shape {tuple(input_boxes.shape)}.")
        if input_points is not None and input_boxes is not None and input_points.shape[1] != input_boxes.shape[1]:
            raise ProcessingError(
                f"input_points has {input_points.shape[1]} prompts per image but input_boxes has "
                f"{input_boxes.shape[1]}; give one box per point prompt (same second dimension)."
            )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )

        vision_states = vision_attentions = None
        if pixel_values is not None:
            vision = self.vision_encoder(pixel_values, output_hidden_states, output_attentions)
            image_embeddings = vision.last_hidden_state
            vision_states, vision_attentions = vision.hidden_states, vision.attentions
        batch = image_embeddings.shape[0]
        if input_points is not None and input_points.shape[0] != batch:
            raise ProcessingError(
                f"{batch} image(s) but input_points has a batch of {input_points.shape[0]}; give one entry per "
                "image (several prompts of one image go in the second dimension)."
            )
        if input_points is not None and input_labels is None:
            input_labels = torch.ones(input_points.shape[:3], dtype=torch.int, device=input_points.device)

        sparse, dense = self.prompt_encoder(input_points, input_labels, input_boxes, input_masks)
        positional = self.get_image_wide_positional_embeddings().expand(batch, -1, -1, -1)
        masks, iou_scores, attentions = self.mask_decoder(
            image_embeddings,
            positional,
            sparse,
            dense,
            multimask_output,
            attention_similarity,
            target_embedding,
            output_attentions,
        )
        return SamImageSegmentationOutput(
            iou_scores=iou_scores,
            pred_masks=masks,
            vision_hidden_states=vision_states,
            vision_attentions=vision_attentions,
            mask_decoder_attentions=attentions if output_attentions else None,
        )

    def generate_masks(self, image: Any, processor: Any = None, **settings: Any):
        """Segment everything in ``image`` with a grid of point prompts; see :class:`SamAutomaticMaskGenerator`.

        ``processor`` defaults to a :class:`SamProcessor` sized for this
        model; ``settings`` are :class:`MaskGenerationSettings` fields.
        """
        from bestiary_sam.automatic import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator(self, processor, **settings).generate(image)


__all__ = ["SamImageSegmentationOutput", "SamModel", "SamPreTrainedModel", "SamVisionEncoderOutput"]
