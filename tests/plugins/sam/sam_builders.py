"""Tiny random SAM checkpoints made by transformers 5.24.0, shared by the SAM tests.

Two reference checkpoints, each built once per session:

- ``parity_checkpoint``: every weight perturbed at random (transformers
  initialises relative-position tables and absolute positions to zero, which
  would hide mistakes), windows that do not divide the patch grid (so window
  padding runs), for comparing tensors with transformers.
- ``amg_checkpoint``: weights scaled so that masks are confident and vary
  from point to point (random SAM weights give near-zero mask logits, whose
  stability scores are all 0), for segment-everything tests.

Both folders also hold transformers' ``processor_config.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_sam")

VISION = dict(
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    window_size=3,
    global_attn_indexes=[1],
    num_pos_feats=8,
    mlp_dim=48,
)
PROMPT = dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=8)
DECODER = dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)
UPSCALE_GAIN = 30.0
PROCESSOR = dict(
    size={"longest_edge": 64},
    pad_size={"height": 64, "width": 64},
    mask_size={"longest_edge": 32},
    mask_pad_size={"height": 32, "width": 32},
)


def reference_config(**vision_overrides) -> transformers.SamConfig:
    """The tiny transformers SamConfig every SAM test uses."""
    return transformers.SamConfig(
        vision_config={**VISION, **vision_overrides}, prompt_encoder_config=PROMPT, mask_decoder_config=DECODER
    )


def perturb_everything(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)


def confident_masks(model: torch.nn.Module) -> None:
    """Weights that give confident masks varying with the point (see the module docstring)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf, owner = name.split(".")[-1], name.split(".")[-2]
            if leaf == "positional_embedding":
                param.normal_(0.0, 1.0)
            elif leaf == "pos_embed":
                param.zero_()  # features then follow image content, not position
            elif param.dim() >= 2 and "embed" not in owner:
                fan_in = (
                    param.shape[0] * param.shape[2] * param.shape[3] if "upscale_conv" in owner else param[0].numel()
                )
                param.normal_(0.0, 1.0 / math.sqrt(fan_in))
            elif param.dim() >= 2 or "rel_pos" in leaf:
                param.normal_(0.0, 0.5)
            else:
                param.add_(torch.randn_like(param) * 0.1)
        decoder = model.mask_decoder
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(50.0)
        decoder.iou_prediction_head.proj_out.bias.add_(0.8)
        for conv in (decoder.upscale_conv1, decoder.upscale_conv2):  # upsample like nearest: no 4x4 texture
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
            conv.bias.zero_()
        decoder.upscale_conv2.weight.mul_(UPSCALE_GAIN)


def build_checkpoint(folder: Path, perturb, seed: int = 0) -> Path:
    """Save a seeded transformers SamModel (weights changed by ``perturb``) and SamProcessor into ``folder``."""
    torch.manual_seed(seed)
    model = transformers.SamModel(reference_config()).eval()
    perturb(model)
    model.save_pretrained(folder)
    transformers.SamProcessor(transformers.SamImageProcessor(**PROCESSOR)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def parity_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("sam_parity"), perturb_everything)


@pytest.fixture(scope="session")
def amg_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("sam_amg"), confident_masks, seed=2)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos from scikit-image, shrunk so every test stays fast."""

    def shrink(array: np.ndarray, width: int) -> np.ndarray:
        image = PIL.Image.fromarray(array)
        height = round(image.height * width / image.width)
        return np.asarray(image.resize((width, height), PIL.Image.Resampling.BILINEAR))

    return {
        "chelsea": shrink(skimage.data.chelsea(), 96),  # 64x96
        "coffee": shrink(skimage.data.coffee(), 120),  # 80x120
        "astronaut": shrink(skimage.data.astronaut(), 72),  # 72x72
    }
