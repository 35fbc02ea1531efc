"""Draw pipeline results over the input image (for ``bestiary run --overlay``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_overlay(task: str, image_source: Any, result: Any, target: str | Path) -> Path:
    """Draw ``result`` of a vision ``task`` over the image and save it as ``target`` (PNG)."""
    from PIL import ImageDraw

    from bestiary.processing.image_utils import load_image

    image = load_image(image_source).convert("RGB")
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas, "RGBA")
    if task == "mask-generation":
        _draw_masks(canvas, result)
    elif task == "keypoint-detection":
        for x, y in _as_list(result.get("keypoints", [])):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=(255, 0, 0, 255), width=1)
    elif task == "image-classification":
        lines = [f"{entry['label']}: {entry['score']:.3f}" for entry in result[:5]]
        draw.rectangle([0, 0, 220, 14 * len(lines) + 6], fill=(0, 0, 0, 160))
        for row, line in enumerate(lines):
            draw.text((4, 3 + 14 * row), line, fill=(255, 255, 255, 255))
    else:
        raise ValueError(f"--overlay is supported for mask-generation, keypoint-detection and image-classification, not {task!r}.")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)
    return target


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _draw_masks(canvas: Any, result: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image

    masks = result.get("masks", [])
    base = np.asarray(canvas).astype(np.float32)
    for index, mask in enumerate(masks):
        mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)
        if mask.shape != base.shape[:2]:
            logger.warning("Skipping a mask of shape %s for an image of shape %s.", mask.shape, base.shape[:2])
            continue
        colour = np.array(_COLOURS[index % len(_COLOURS)], dtype=np.float32)
        base[mask] = 0.55 * base[mask] + 0.45 * colour
    canvas.paste(Image.fromarray(base.clip(0, 255).astype(np.uint8)))
