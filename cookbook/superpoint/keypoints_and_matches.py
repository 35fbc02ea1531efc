"""Detect SuperPoint keypoints on a real photo and match them against a shifted crop of it.

Run from the repository root:

    .venv/bin/python cookbook/superpoint/keypoints_and_matches.py [--output FOLDER]

It writes two pictures to cookbook/superpoint/output/ (or FOLDER; the docs
page uses ``--output docs/images/superpoint``):

- keypoints.png: the keypoints found on scikit-image's astronaut photo,
  coloured by score;
- matches.png: the photo next to a crop of it that starts 64 px to the right
  and 40 px lower (whole 8-pixel cells), with a line per match: green when
  the match agrees with the known shift, red when it does not.

No trained SuperPoint weights can be downloaded here, so the model is a
FIXED RANDOM one (seed 0), not magic-leap-community/superpoint: Kaiming-normal
convolutions with zero biases, the first layer's kernels shifted to zero mean
(flat regions give zero features, hence uniform scores below the 0.02
threshold, so keypoints only appear where the intensity changes), and the
keypoint logits scaled by 3. Its keypoints are not SuperPoint's corners, but
every layer is translation-equivariant, so its descriptors identify the same
image patch in both pictures, which is what the matching demo needs. With a
real checkpoint, pass its folder or repo id to ``pipeline(...)`` instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageDraw

from bestiary import pipeline
from bestiary_superpoint import SuperPointConfig, SuperPointForKeypointDetection, SuperPointImageProcessor

OUTPUT = Path(__file__).with_name("output")
SHIFT = (64, 40)  # (dx, dy) of the crop, in pixels: 8 and 5 cells


def fixed_random_superpoint(seed: int = 0) -> SuperPointForKeypointDetection:
    """The deterministic stand-in for trained weights described in the module docstring."""
    config = SuperPointConfig(
        encoder_hidden_sizes=[16, 16, 32, 32],
        decoder_hidden_size=32,
        descriptor_decoder_dim=32,
        keypoint_threshold=0.02,
        max_keypoints=500,
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


def score_colour(score: float, low: float, high: float) -> tuple[int, int, int]:
    """Yellow for the best keypoints, through orange, to red for the weakest."""
    t = 0.0 if high <= low else (score - low) / (high - low)
    return 255, int(40 + 215 * t), int(40 * (1 - t))


def draw_keypoints(photo: np.ndarray, keypoints: torch.Tensor, scores: torch.Tensor) -> Image.Image:
    """The photo with a circle per keypoint."""
    image = Image.fromarray(photo).convert("RGB")
    draw = ImageDraw.Draw(image)
    low, high = float(scores.min()), float(scores.max())
    for (x, y), score in zip(keypoints.tolist(), scores.tolist()):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=score_colour(score, low, high), width=2)
    return image


def draw_matches(photo: np.ndarray, crop: np.ndarray, matches: list[dict], gap: int = 16) -> tuple[Image.Image, int]:
    """The photo and the crop side by side with a line per match; also return how many agree with the shift."""
    height = max(photo.shape[0], crop.shape[0])
    canvas = Image.new("RGB", (photo.shape[1] + gap + crop.shape[1], height), "white")
    canvas.paste(Image.fromarray(photo), (0, 0))
    canvas.paste(Image.fromarray(crop), (photo.shape[1] + gap, 0))
    draw = ImageDraw.Draw(canvas)
    offset = photo.shape[1] + gap
    correct = 0
    for match in reversed(matches):  # best matches drawn last, on top
        x0, y0 = match["keypoint_image_0"]["x"], match["keypoint_image_0"]["y"]
        x1, y1 = match["keypoint_image_1"]["x"], match["keypoint_image_1"]["y"]
        agrees = abs(x0 - x1 - SHIFT[0]) < 0.5 and abs(y0 - y1 - SHIFT[1]) < 0.5
        correct += agrees
        colour = (30, 200, 60) if agrees else (230, 30, 30)
        draw.line([(x0, y0), (x1 + offset, y1)], fill=colour, width=1)
        for x, y in ((x0, y0), (x1 + offset, y1)):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=colour)
    return canvas, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder for keypoints.png and matches.png")
    output = parser.parse_args().output
    output.mkdir(parents=True, exist_ok=True)
    model = fixed_random_superpoint()
    # Keep the photo's own size (no resize to 480x640) so that pixel shifts stay exact; convert to grey.
    processor = SuperPointImageProcessor(do_grayscale=True, do_resize=False)
    photo = skimage.data.astronaut()

    detector = pipeline("keypoint-detection", model=model, image_processor=processor)
    found = detector(photo, coordinates="round")
    draw_keypoints(photo, found["keypoints"], found["scores"]).save(output / "keypoints.png")
    print(f"keypoints.png: {len(found['scores'])} keypoints on the {photo.shape[1]}x{photo.shape[0]} photo")

    dx, dy = SHIFT
    crop = photo[dy : dy + 400, dx : dx + 384]
    matcher = pipeline("keypoint-matching", model=model, image_processor=processor)
    matches = matcher([photo, crop])
    picture, correct = draw_matches(photo, crop, matches)
    picture.save(output / "matches.png")
    print(
        f"matches.png: {len(matches)} matches between the photo and its crop shifted by {SHIFT}; "
        f"{correct} ({correct / max(len(matches), 1):.1%}) agree with the shift"
    )


if __name__ == "__main__":
    main()
