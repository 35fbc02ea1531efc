"""SuperPoint: a fully convolutional keypoint detector and descriptor.

Read from top to bottom:

1. the encoder: VGG-style blocks of two 3x3 convolutions with ReLU; every
   block but the last ends with a 2x2 max pool, so one feature vector of the
   last block covers a ``cell_size`` x ``cell_size`` cell (8x8) of the image;
2. the keypoint decoder: per cell, ``cell_size**2 + 1`` logits (one per pixel
   of the cell and a "no keypoint" bin); a softmax over them, the bin dropped
   and a pixel shuffle give a full-resolution score map; non-maximum
   suppression keeps local maxima; keypoints are the pixels above
   ``keypoint_threshold``, away from the border, optionally the
   ``max_keypoints`` best;
3. the descriptor decoder: a coarse map of L2-normalised descriptors, one per
   cell, sampled bilinearly at each keypoint and L2-normalised again.

Images in a batch give different numbers of keypoints, so the outputs are
padded to the largest count with a ``mask`` (1 for a keypoint, 0 for
padding), and keypoints are (x, y) relative to the input's width and height,
as transformers returns them. Tensor names equal transformers' so
checkpoints move both ways unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.errors import ProcessingError
from bestiary.modeling import PreTrainedModel
from bestiary.outputs import ModelOutput
from bestiary_superpoint.configuration_superpoint import SuperPointConfig

logger = logging.getLogger(__name__)


@dataclass
class SuperPointKeypointDescriptionOutput(ModelOutput):
    """Keypoints, scores and descriptors of a batch, padded to the largest keypoint count.

    - ``keypoints``: (batch, keypoints, 2) float (x, y) relative to the input
      width and height (multiply by an image size to get pixels, see
      ``SuperPointImageProcessor.post_process_keypoint_detection``).
    - ``scores``: (batch, keypoints) detection scores.
    - ``descriptors``: (batch, keypoints, descriptor_decoder_dim), unit length.
    - ``mask``: (batch, keypoints) int32, 1 where a keypoint is real, 0 on padding.
    - ``hidden_states``: the output of every encoder block, when asked for.
    """

    loss: Any = None
    keypoints: Any = None
    scores: Any = None
    descriptors: Any = None
    mask: Any = None
    hidden_states: tuple | None = None


def non_maximum_suppression(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Return ``scores`` (batch, height, width) with every value that is not a local maximum set to 0.

    A pixel survives when it is the maximum of its (2 * radius + 1) square
    window. Two more rounds then revive maxima among the pixels that no
    survivor's window covers, so a weak corner next to a suppressed region is
    not lost (the scheme of the SuperPoint / SuperGlue reference code).
    """
    if radius < 0:
        raise ProcessingError(f"nms_radius must be 0 or more pixels, got {radius}.")
    size = 2 * radius + 1

    def window_max(values: torch.Tensor) -> torch.Tensor:
        # A square max is a row max then a column max: same values, a fraction of the work.
        rows = F.max_pool2d(values.unsqueeze(1), kernel_size=(1, size), stride=1, padding=(0, radius))
        return F.max_pool2d(rows, kernel_size=(size, 1), stride=1, padding=(radius, 0)).squeeze(1)

    is_max = scores == window_max(scores)
    for _ in range(2):
        covered = window_max(is_max.to(scores.dtype)) > 0
        remaining = scores.masked_fill(covered, 0.0)
        is_max = is_max | ((remaining == window_max(remaining)) & ~covered)
    return scores.masked_fill(~is_max, 0.0)


class SuperPointConvBlock(nn.Module):
    """Two 3x3 convolutions with ReLU, then (except in the last block) a 2x2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, add_pooling: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_b = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2) if add_pooling else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.relu(self.conv_b(self.relu(self.conv_a(hidden_states))))
        return self.pool(hidden_states) if self.pool is not None else hidden_states


class SuperPointEncoder(nn.Module):
    """The shared encoder: one-channel image to (batch, channels, height / cell, width / cell) features."""

    def __init__(self, config: SuperPointConfig) -> None:
        super().__init__()
        sizes = config.encoder_hidden_sizes
        in_channels = [1, *sizes[:-1]]
        self.conv_blocks = nn.ModuleList(
            SuperPointConvBlock(in_channels[i], sizes[i], add_pooling=i < len(sizes) - 1) for i in range(len(sizes))
        )

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple]:
        """Return the last block's features and (when asked) every block's output."""
        hidden_states: tuple[torch.Tensor, ...] = ()
        features = pixel_values
        for block in self.conv_blocks:
            features = block(features)
            if output_hidden_states:
                hidden_states = hidden_states + (features,)
        return features, hidden_states


class SuperPointInterestPointDecoder(nn.Module):
    """Keypoint head: per-cell logits to a full-resolution score map, then keypoint selection.

    The selection settings are read from the config on every call, so
    changing ``model.config.keypoint_threshold`` (or ``max_keypoints``,
    ``nms_radius``, ``border_removal_distance``) takes effect at once.
    """

    def __init__(self, config: SuperPointConfig) -> None:
        super().__init__()
        self.config = config
        self.relu = nn.ReLU()
        self.conv_score_a = nn.Conv2d(
            config.encoder_hidden_sizes[-1], config.decoder_hidden_size, kernel_size=3, stride=1, padding=1
        )
        self.conv_score_b = nn.Conv2d(config.decoder_hidden_size, config.keypoint_decoder_dim, kernel_size=1)

    def score_map(self, features: torch.Tensor) -> torch.Tensor:
        """Return the (batch, height, width) keypoint scores after non-maximum suppression.

        ``height`` and ``width`` are the feature map's times the cell size:
        image rows and columns beyond the last whole cell get no score.
        """
        logits = self.conv_score_b(self.relu(self.conv_score_a(features)))
        probabilities = logits.softmax(dim=1)[:, :-1]  # drop the "no keypoint" bin
        scores = F.pixel_shuffle(probabilities, self.config.cell_size).squeeze(1)
        return non_maximum_suppression(scores, self.config.nms_radius)

    def select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (x, y) pixel keypoints (float) and the scores of one (height, width) score map.

        Order: row-major scan order, or by decreasing score when
        ``max_keypoints`` cuts the list (as transformers orders them).

        Border removal follows transformers 5.24, which compares rows and
        columns against 8 times the score map's size: keypoints near the top
        and left borders are dropped, those near the bottom and right borders
        are kept. This keeps keypoints identical to the reference's.
        """
        config = self.config
        height, width = scores.shape
        rows, columns = torch.nonzero(scores > config.keypoint_threshold, as_tuple=True)
        values = scores[rows, columns]
        border = config.border_removal_distance
        row_limit, column_limit = height * config.cell_size, width * config.cell_size
        inside = (rows >= border) & (rows < row_limit - border)
        inside &= (columns >= border) & (columns < column_limit - border)
        rows, columns, values = rows[inside], columns[inside], values[inside]
        if 0 <= config.max_keypoints < values.shape[0]:
            values, best = torch.topk(values, config.max_keypoints)
            rows, columns = rows[best], columns[best]
        # Pixel positions stay exact: at least float32, even for a half-precision model.
        keypoints = torch.stack([columns, rows], dim=-1).to(torch.promote_types(values.dtype, torch.float32))
        return keypoints, values


class SuperPointDescriptorDecoder(nn.Module):
    """Descriptor head: a coarse map of unit descriptors, sampled bilinearly at keypoints."""

    def __init__(self, config: SuperPointConfig) -> None:
        super().__init__()
        self.cell_size = config.cell_size
        self.relu = nn.ReLU()
        self.conv_descriptor_a = nn.Conv2d(
            config.encoder_hidden_sizes[-1], config.decoder_hidden_size, kernel_size=3, stride=1, padding=1
        )
        self.conv_descriptor_b = nn.Conv2d(config.decoder_hidden_size, config.descriptor_decoder_dim, kernel_size=1)

    def dense(self, features: torch.Tensor) -> torch.Tensor:
        """Return the (batch, descriptor_dim, height / cell, width / cell) map of unit descriptors."""
        descriptors = self.conv_descriptor_b(self.relu(self.conv_descriptor_a(features)))
        return F.normalize(descriptors, p=2, dim=1)

    def sample(self, dense: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Return unit descriptors (batch, keypoints, dim) at the (x, y) pixels ``keypoints`` (batch, keypoints, 2).

        Cell ``i`` of the coarse map sits at pixel ``c_i = cell * i + cell / 2 - 0.5``
        (the centre of its cell). A pixel ``x`` is mapped to
        ``(x - c_0) / c_last * 2 - 1`` in ``grid_sample``'s corner-aligned
        coordinates: the formula of the SuperPoint reference code, which
        transformers keeps. ``c_0`` maps to -1; as the divisor is ``c_last``
        rather than ``c_last - c_0``, points further right or down are read
        slightly (less than half a cell) towards the first cells.
        """
        batch, channels, rows, columns = dense.shape
        if keypoints.shape[1] == 0:
            return dense.new_zeros((batch, 0, channels))
        cell = self.cell_size
        first_centre = cell / 2 - 0.5
        last_centres = [columns * cell - cell / 2 - 0.5, rows * cell - cell / 2 - 0.5]
        span = torch.tensor(last_centres, dtype=keypoints.dtype, device=keypoints.device)
        grid = (keypoints - first_centre) / span * 2 - 1
        sampled = F.grid_sample(dense, grid.unsqueeze(1), mode="bilinear", align_corners=True)  # (B, D, 1, N)
        sampled = F.normalize(sampled.squeeze(2), p=2, dim=1)
        return sampled.transpose(1, 2)


class SuperPointPreTrainedModel(PreTrainedModel):
    """Base of SuperPoint models: config class, weight names and initialisation."""

    config_class = SuperPointConfig
    base_model_prefix = "superpoint"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        """Convolutions: normal(0, initializer_range) weights and zero biases (transformers' scheme)."""
        if isinstance(module, nn.Conv2d):
            module.weight.data.normal_(0.0, self.config.initializer_range)
            if module.bias is not None:
                module.bias.data.zero_()


class SuperPointForKeypointDetection(SuperPointPreTrainedModel):
    """SuperPoint: keypoints with scores and descriptors for a batch of images.

    ``pixel_values`` is (batch, channels, height, width); only the first
    channel is read (the image processor's grayscale conversion repeats the
    grey value in all three channels, as transformers' does). Sides need not
    be multiples of 8: the rows and columns past the last whole cell get no
    keypoints, and keypoints are relative to the full input size, so nothing
    shifts.
    """

    def __init__(self, config: SuperPointConfig) -> None:
        super().__init__(config)
        self.encoder = SuperPointEncoder(config)
        self.keypoint_decoder = SuperPointInterestPointDecoder(config)
        self.descriptor_decoder = SuperPointDescriptorDecoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SuperPointKeypointDescriptionOutput | tuple:
        """Detect and describe keypoints; see :class:`SuperPointKeypointDescriptionOutput`."""
        if labels is not None:
            raise ProcessingError("labels: SuperPoint has no training loss in bestiary; call the model without labels.")
        if pixel_values.ndim != 4:
            raise ProcessingError(
                f"pixel_values must be (batch, channels, height, width); got shape {tuple(pixel_values.shape)}. "
                "Use SuperPointImageProcessor(images, return_tensors='pt') to build it."
            )
        cell = self.config.cell_size
        batch, _, height, width = pixel_values.shape
        if height < cell or width < cell:
            raise ProcessingError(
                f"pixel_values of {height}x{width} pixels is smaller than one {cell}x{cell} cell; "
                f"use images of at least {cell}x{cell} pixels."
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict

        features, hidden_states = self.encoder(pixel_values[:, :1], output_hidden_states=bool(output_hidden_states))
        score_maps = self.keypoint_decoder.score_map(features)
        selected = [self.keypoint_decoder.select(score_map) for score_map in score_maps]

        count = max(keypoints.shape[0] for keypoints, _ in selected)
        # Outputs are at least float32 (as transformers returns them), whatever the model's dtype.
        dtype, device = torch.promote_types(score_maps.dtype, torch.float32), score_maps.device
        keypoints = torch.zeros((batch, count, 2), dtype=dtype, device=device)
        scores = torch.zeros((batch, count), dtype=dtype, device=device)
        mask = torch.zeros((batch, count), dtype=torch.int32, device=device)
        for index, (image_keypoints, image_scores) in enumerate(selected):
            found = image_keypoints.shape[0]
            keypoints[index, :found] = image_keypoints
            scores[index, :found] = image_scores
            mask[index, :found] = 1

        dense = self.descriptor_decoder.dense(features).to(dtype)
        descriptors = self.descriptor_decoder.sample(dense, keypoints) * mask.unsqueeze(-1).to(dtype)

        keypoints = keypoints / torch.tensor([width, height], dtype=dtype, device=device)
        output = SuperPointKeypointDescriptionOutput(
            keypoints=keypoints,
            scores=scores,
            descriptors=descriptors,
            mask=mask,
            hidden_states=hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "SuperPointForKeypointDetection",
    "SuperPointKeypointDescriptionOutput",
    "SuperPointPreTrainedModel",
    "non_maximum_suppression",
]
