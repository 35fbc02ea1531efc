"""Tiny SuperPoint checkpoints and test images shared by the SuperPoint tests.

- ``reference_checkpoint``: a tiny random checkpoint made by transformers
  5.24.0, for comparing tensors. transformers initialises convolutions with
  std 0.02 and zero biases, which makes every logit nearly 0 and every score
  the same 1/65: all pixels would tie and non-maximum suppression would have
  nothing to do. So weights are redrawn (Kaiming normal, biases normal
  std 0.1) before saving, which gives peaked, varied scores.
- ``matching_checkpoint``: the fixed, deterministic bestiary model the
  matching tests use (no real SuperPoint weights exist offline); see
  :func:`build_matching_model`. Its folder also holds a processor that keeps
  the image size (``do_resize=False``) and converts to grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_superpoint")

from bestiary_superpoint.configuration_superpoint import SuperPointConfig  # noqa: E402
from bestiary_superpoint.image_processing_superpoint import SuperPointImageProcessor  # noqa: E402
from bestiary_superpoint.modeling_superpoint import SuperPointForKeypointDetection  # noqa: E402

TINY = dict(encoder_hidden_sizes=[8, 8, 16, 16], decoder_hidden_size=16, descriptor_decoder_dim=24)
# Processed size of the parity batches: neither side is a multiple of 8.
PROCESSED_SIZE = {"height": 60, "width": 84}


def redraw_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every convolution Kaiming-normal weights and N(0, 0.1) biases (deterministic)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def build_matching_model(seed: int = 0) -> SuperPointForKeypointDetection:
    """A fixed random SuperPoint whose keypoints and descriptors follow image structure.

    Seeded Kaiming-normal convolutions with zero biases; the first
    convolution's kernels are shifted to zero mean, so a flat region gives
    zero features everywhere and uniform scores (1/65, below the 0.02
    threshold): keypoints only appear where the intensity changes. The
    keypoint logits are scaled by 3 to make scores peaked. Every layer is
    translation-equivariant, so shifting an image by whole 8-pixel cells
    shifts keypoints and descriptors exactly (away from the borders).
    """
    config = SuperPointConfig(
        encoder_hidden_sizes=[16, 16, 32, 32],
        decoder_hidden_size=32,
        descriptor_decoder_dim=32,
        keypoint_threshold=0.02,
        max_keypoints=300,
    )
    torch.manual_seed(seed)
    model = SuperPointForKeypointDetection(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
                module.bias.zero_()
        first = model.encoder.conv_blocks[0].conv_a.weight
        first -= first.mean(dim=(1, 2, 3), keepdim=True)
        model.keypoint_decoder.conv_score_b.weight *= 3.0
    return model


def photo_region(height: int = 200, width: int = 264) -> np.ndarray:
    """A textured (height, width, 3) uint8 region of scikit-image's astronaut photo."""
    return skimage.data.astronaut()[200 : 200 + height, 120 : 120 + width].copy()


def mixed_size_images() -> list[np.ndarray]:
    """Three RGB photos of different sizes, none a multiple of 8."""
    return [
        skimage.data.astronaut()[100:197, 50:181],
        skimage.data.chelsea()[30:131, 40:187],
        np.stack([skimage.data.camera()[200:271, 180:269]] * 3, axis=-1),
    ]


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """(folder, transformers model) of the tiny parity checkpoint, with a grey 60x84 processor."""
    folder = tmp_path_factory.mktemp("superpoint-reference")
    torch.manual_seed(0)
    model = transformers.SuperPointForKeypointDetection(transformers.SuperPointConfig(**TINY)).eval()
    redraw_weights(model)
    model.save_pretrained(folder)
    transformers.SuperPointImageProcessor(do_grayscale=True, size=PROCESSED_SIZE).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def matching_checkpoint(tmp_path_factory) -> Path:
    """Folder of :func:`build_matching_model` with a grey, size-keeping processor."""
    folder = tmp_path_factory.mktemp("superpoint-matching")
    build_matching_model().save_pretrained(folder)
    SuperPointImageProcessor(do_grayscale=True, do_resize=False).save_pretrained(folder)
    return folder
