"""``SuperPointConfig``: the settings of a SuperPoint keypoint detector and descriptor.

Field names and defaults are transformers' (``magic-leap-community/superpoint``),
so ``config.json`` files move both ways unchanged.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator, model_validator

from bestiary.config import Config


class SuperPointConfig(Config):
    """Configuration of :class:`~bestiary_superpoint.modeling_superpoint.SuperPointForKeypointDetection`.

    - ``encoder_hidden_sizes``: channels of the encoder's conv blocks; every
      block but the last halves the resolution, so with four blocks one
      feature vector covers an 8x8 cell (``cell_size``).
    - ``decoder_hidden_size``: channels of the first conv of both decoders.
    - ``keypoint_decoder_dim``: logits per cell, one per pixel of the cell
      plus a "no keypoint" bin (65 for 8x8 cells).
    - ``descriptor_decoder_dim``: length of a descriptor.
    - ``keypoint_threshold``: minimum score of a keypoint.
    - ``max_keypoints``: keep at most this many keypoints (highest scores
      first) per image; -1 keeps them all.
    - ``nms_radius``: radius, in pixels, of the non-maximum suppression.
    - ``border_removal_distance``: keypoints closer than this to the top or
      left border are dropped (see the model's notes on the other borders).
    """

    model_type: ClassVar[str] = "superpoint"

    encoder_hidden_sizes: list[int] = [64, 64, 128, 128]
    decoder_hidden_size: int = 256
    keypoint_decoder_dim: int = 65
    descriptor_decoder_dim: int = 256
    keypoint_threshold: float = 0.005
    max_keypoints: int = -1
    nms_radius: int = 4
    border_removal_distance: int = 4
    initializer_range: float = 0.02

    @field_validator("encoder_hidden_sizes")
    @classmethod
    def _check_encoder(cls, value: list[int]) -> list[int]:
        if len(value) < 2 or any(size <= 0 for size in value):
            raise ValueError("encoder_hidden_sizes needs at least two positive channel counts, e.g. [64, 64, 128, 128]")
        return value

    @field_validator("decoder_hidden_size", "descriptor_decoder_dim")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive number of channels")
        return value

    @field_validator("nms_radius", "border_removal_distance")
    @classmethod
    def _check_non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more pixels")
        return value

    @field_validator("max_keypoints")
    @classmethod
    def _check_max_keypoints(cls, value: int) -> int:
        if value < -1:
            raise ValueError("must be -1 (keep every keypoint) or a count of 0 or more")
        return value

    @model_validator(mode="after")
    def _check_cells(self) -> "SuperPointConfig":
        cell = self.cell_size
        if self.keypoint_decoder_dim != cell * cell + 1:
            raise ValueError(
                f"keypoint_decoder_dim must be {cell * cell + 1} (one logit per pixel of a {cell}x{cell} cell plus "
                f"the 'no keypoint' bin) for {len(self.encoder_hidden_sizes)} encoder blocks; "
                f"got {self.keypoint_decoder_dim}"
            )
        return self

    @property
    def cell_size(self) -> int:
        """Side in pixels of the square cell one encoder feature vector covers (8 for four blocks)."""
        return 2 ** (len(self.encoder_hidden_sizes) - 1)
