"""Prompt SAM with a point and a box on a real photo, then segment everything; draw the masks.

Run from the repository root:

    .venv/bin/python cookbook/sam/segment.py [--output FOLDER]

It writes two pictures to cookbook/sam/output/ (or FOLDER; the docs page uses
``--output docs/images/sam``), on scikit-image's chelsea photo (451x300):

- prompted.png: the masks for one point prompt (blue, the point as a white
  dot) and one box prompt (orange, the box outlined), each the best of the
  three masks SAM proposes (highest predicted IoU);
- everything.png: every mask segment-everything keeps (16x16 point grid),
  each in its own colour.

No trained SAM weights can be downloaded here, so the model is a TINY RANDOM
one (seed 0), not facebook/sam-vit-*: a 256-pixel, 4-layer image encoder and
random weights, rescaled so that masks are confident (random SAM weights give
mask logits near zero) and smooth (each transposed convolution of the mask
upscaler repeats one kernel tap, so no 4x4 texture). Its masks follow the
colours and textures the random encoder responds to, not objects. With a
real checkpoint, pass its folder or repo id to ``from_pretrained`` /
``pipeline(...)`` instead; the code is the same.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import skimage.data
import torch
from bestiary_sam import (
    SamAutomaticMaskGenerator,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
)
from PIL import Image, ImageDraw

OUTPUT = Path(__file__).with_name("output")
POINT = (250, 110)  # (x, y) on the cat's head
BOX = (150, 20, 360, 280)  # x1, y1, x2, y2 around the cat


def tiny_random_sam(seed: int = 0) -> SamModel:
    """The deterministic stand-in for trained weights described in the module docstring."""
    config = SamConfig(
        vision_config=dict(
            hidden_size=64,
            output_channels=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=256,
            patch_size=16,
            window_size=7,
            global_attn_indexes=[1, 3],
            num_pos_feats=16,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf, owner = name.split(".")[-1], name.split(".")[-2]
            if leaf == "positional_embedding":
                param.normal_(0.0, 1.0)
            elif leaf == "pos_embed":
                param.zero_()
            elif param.dim() >= 2 and "embed" not in owner:
                fan_in = param.shape[0] * 4 if "upscale_conv" in owner else param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in))
            elif param.dim() >= 2 or "rel_pos" in leaf:
                param.normal_(0.0, 0.5)
            else:
                param.add_(torch.randn_like(param) * 0.1)
        decoder = model.mask_decoder
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(50.0)
        decoder.iou_prediction_head.proj_out.bias.add_(0.8)
        for conv in (decoder.upscale_conv1, decoder.upscale_conv2):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
            conv.bias.zero_()
        decoder.upscale_conv2.weight.mul_(30.0)
    return model


def tint(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.55) -> None:
    """Blend ``colour`` into ``picture`` (H, W, 3 float) where ``mask`` is set, and darken the mask's outline."""
    picture[mask] = (1 - alpha) * picture[mask] + alpha * np.array(colour, dtype=np.float32)
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    picture[mask & ~inner] = np.array(colour, dtype=np.float32) * 0.5


def prompted(model: SamModel, processor: SamProcessor, photo: np.ndarray, path: Path) -> None:
    """Segment with a point prompt and a box prompt; save the overlay."""
    inputs = processor(images=photo, input_points=[[[POINT]]], input_labels=[[[1]]], return_tensors="pt")
    box_inputs = processor(images=photo, input_boxes=[[BOX]], return_tensors="pt")
    with torch.no_grad():
        embeddings = model.get_image_embeddings(inputs["pixel_values"])  # encode once, prompt twice
        by_point = model(
            image_embeddings=embeddings, input_points=inputs["input_points"], input_labels=inputs["input_labels"]
        )
        by_box = model(image_embeddings=embeddings, input_boxes=box_inputs["input_boxes"])
    picture = photo.astype(np.float32)
    for output, colour, name in ((by_box, (255, 140, 0), "box"), (by_point, (40, 120, 255), "point")):
        masks = processor.post_process_masks(
            output.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        best = int(output.iou_scores[0, 0].argmax())
        mask = masks[0, best].numpy()
        tint(picture, mask, colour)
        print(
            f"{name} prompt: best of 3 masks is #{best} (predicted IoU {output.iou_scores[0, 0, best]:.2f}), "
            f"{int(mask.sum())} pixels"
        )
    image = Image.fromarray(picture.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle(BOX, outline=(255, 140, 0), width=3)
    x, y = POINT
    draw.ellipse((x - 6, y - 6, x + 6, y + 6), fill=(255, 255, 255), outline=(40, 120, 255), width=3)
    image.save(path)


def everything(model: SamModel, processor: SamProcessor, photo: np.ndarray, path: Path) -> None:
    """Segment everything; save every kept mask, each in its own colour."""
    generator = SamAutomaticMaskGenerator(
        model, processor, points_per_side=16, points_per_batch=64, pred_iou_thresh=0.7, stability_score_thresh=0.8
    )
    result = generator.generate(photo)
    print(f"segment everything: {len(result)} masks kept from 16x16 points x 3 masks")
    picture = photo.astype(np.float32) * 0.6
    rng = np.random.default_rng(0)
    order = torch.argsort(result.areas, descending=True)  # large masks first, small ones stay visible on top
    for index in order.tolist():
        colour = tuple(int(c) for c in rng.integers(40, 256, 3))
        tint(picture, result.masks[index].numpy(), colour, alpha=0.6)
    Image.fromarray(picture.clip(0, 255).astype(np.uint8)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder for the PNG files")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    print("NOTE: no SAM weights are available offline, so this uses a TINY RANDOM SAM (seed 0), not a trained one:")
    print("      the masks show the code path and the drawing, not meaningful segments.")
    model = tiny_random_sam()
    processor = SamProcessor(
        SamImageProcessor(
            size={"longest_edge": 256},
            pad_size={"height": 256, "width": 256},
            mask_size={"longest_edge": 64},
            mask_pad_size={"height": 64, "width": 64},
        )
    )
    photo = skimage.data.chelsea()
    prompted(model, processor, photo, args.output / "prompted.png")
    everything(model, processor, photo, args.output / "everything.png")
    print(f"wrote {args.output / 'prompted.png'} and {args.output / 'everything.png'}")


if __name__ == "__main__":
    main()
