"""Draw Swin's stage feature maps for a photo into a PNG.

    python cookbook/vision/swin_feature_maps.py                       # random Swin-T, scikit-image's cat
    python cookbook/vision/swin_feature_maps.py --checkpoint FOLDER   # a Swin checkpoint (transformers' format)
    python cookbook/vision/swin_feature_maps.py --image photo.jpg --output maps.png

The photo is resized to 224x336 (Swin pads inputs that are not a multiple of
its patch or window size, so the aspect ratio is kept), run through
``SwinBackbone`` with every stage selected, and each stage's map is drawn
twice: its three principal components as colours (top row) and its
per-location activation energy (bottom row). Each tile says the stage name,
the map's size, channels and stride, straight from the backbone contract.

Without ``--checkpoint`` the backbone has random weights (this machine
reaches no model hub): the maps then show what the architecture itself
preserves (edges and colour regions early, coarse layout later), not learned
semantics. Point ``--checkpoint`` at a downloaded
``microsoft/swin-tiny-patch4-window7-224`` folder to see trained features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from bestiary.auto import AutoBackbone
from bestiary_swin.configuration_swin import SwinConfig
from bestiary_swin.image_processing_swin import SwinImageProcessor

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "output" / "swin_feature_maps.png"
INPUT_SIZE = {"height": 224, "width": 336}
TILE = (240, 160)  # width, height of each drawn tile
LABEL_HEIGHT = 18
# Microsoft's Swin preprocessing: bicubic resize, ImageNet mean and std.
PROCESSOR_SETTINGS = dict(
    size=INPUT_SIZE, resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
)


def load_photo(path: str | None) -> PIL.Image.Image:
    """The photo to draw: a file, or scikit-image's cat (chelsea)."""
    if path:
        return PIL.Image.open(path).convert("RGB")
    import skimage.data

    return PIL.Image.fromarray(skimage.data.chelsea())


def build_backbone(checkpoint: str | None) -> torch.nn.Module:
    """A Swin backbone returning every stage: from ``checkpoint``, else Swin-T with random weights."""
    every_stage = ["stem", "stage1", "stage2", "stage3", "stage4"]
    if checkpoint:
        return AutoBackbone.from_pretrained(checkpoint, out_features=every_stage)
    torch.manual_seed(0)
    return AutoBackbone.from_config(SwinConfig(out_features=every_stage)).eval()


def principal_colours(feature_map: torch.Tensor) -> np.ndarray:
    """(C, H, W) to (H, W, 3) uint8: the three leading principal components, each stretched to 0..255."""
    channels, height, width = feature_map.shape
    samples = feature_map.reshape(channels, -1).T.double()
    samples = samples - samples.mean(dim=0)
    _, _, components = torch.linalg.svd(samples, full_matrices=False)
    projected = samples @ components[:3].T
    low, high = projected.quantile(0.02, dim=0), projected.quantile(0.98, dim=0)
    scaled = ((projected - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)
    return (scaled.reshape(height, width, 3).numpy() * 255).astype(np.uint8)


def energy_colours(feature_map: torch.Tensor) -> np.ndarray:
    """(C, H, W) to (H, W, 3) uint8: the L2 norm over channels on a dark-blue to yellow ramp."""
    energy = feature_map.double().norm(dim=0)
    low, high = energy.quantile(0.02), energy.quantile(0.98)
    value = ((energy - low) / (high - low).clamp_min(1e-8)).clamp(0, 1).numpy()[..., None]
    dark, middle, light = np.array([20, 16, 60]), np.array([190, 50, 90]), np.array([250, 230, 80])
    ramp = np.where(value < 0.5, dark + (middle - dark) * value * 2, middle + (light - middle) * (value - 0.5) * 2)
    return ramp.astype(np.uint8)


def tile(pixels: np.ndarray | PIL.Image.Image, label: str) -> PIL.Image.Image:
    """A labelled tile: the picture scaled to the tile (nearest, so feature cells stay visible)."""
    image = pixels if isinstance(pixels, PIL.Image.Image) else PIL.Image.fromarray(pixels)
    resample = PIL.Image.Resampling.BICUBIC if isinstance(pixels, PIL.Image.Image) else PIL.Image.Resampling.NEAREST
    canvas = PIL.Image.new("RGB", (TILE[0], TILE[1] + LABEL_HEIGHT), "white")
    canvas.paste(image.resize(TILE, resample), (0, LABEL_HEIGHT))
    PIL.ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def draw(photo: PIL.Image.Image, backbone: torch.nn.Module, processor: SwinImageProcessor) -> PIL.Image.Image:
    """The two-row picture: photo then one tile per stage, principal colours on top and energy below."""
    pixel_values = processor(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feature_maps = backbone(pixel_values).feature_maps
    shown = processor.with_overrides(do_normalize=False)(photo, return_tensors="pt")["pixel_values"][0]
    resized = PIL.Image.fromarray((shown.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
    top = [tile(resized, f"input {INPUT_SIZE['height']}x{INPUT_SIZE['width']}")]
    legend = torch.linspace(0, 1, TILE[0], dtype=torch.float64)[None, None, :].expand(1, TILE[1], TILE[0])
    bottom = [tile(energy_colours(legend), "energy scale: low -> high")]
    for name, stride, channels, feature_map in zip(
        backbone.out_features, backbone.strides, backbone.channels, feature_maps
    ):
        height, width = feature_map.shape[-2:]
        label = f"{name} {height}x{width}x{channels} /{stride}"
        top.append(tile(principal_colours(feature_map[0]), label))
        bottom.append(tile(energy_colours(feature_map[0]), label))
    width, height = top[0].size
    picture = PIL.Image.new("RGB", (width * len(top), height * 2), "white")
    for column, (upper, lower) in enumerate(zip(top, bottom)):
        picture.paste(upper, (column * width, 0))
        picture.paste(lower, (column * width, height))
    return picture


def main(argv: list[str] | None = None) -> Path:
    """Draw the feature maps and return the PNG's path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a Swin checkpoint folder (default: random Swin-T weights)")
    parser.add_argument("--image", help="a photo (default: scikit-image's chelsea)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the PNG")
    args = parser.parse_args(argv)

    backbone = build_backbone(args.checkpoint)
    processor = SwinImageProcessor(**PROCESSOR_SETTINGS)
    picture = draw(load_photo(args.image), backbone, processor)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=256, dither=PIL.Image.Dither.FLOYDSTEINBERG).save(output, optimize=True)
    print(f"Wrote {output} ({output.stat().st_size // 1024} KiB): stages {backbone.out_features}, "
          f"strides {backbone.strides}, channels {backbone.channels}.")
    return output


if __name__ == "__main__":
    main()
