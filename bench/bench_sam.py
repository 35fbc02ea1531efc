"""Segment everything: bestiary-sam against transformers' pipeline("mask-generation"), same model, same image.

Run: ``.venv/bin/python bench/bench_sam.py [--quick]``

One random SAM checkpoint (small, as no real SAM weights are available
offline) is made with transformers and loaded by both libraries; the image is
scikit-image's chelsea photo at full size (300x451). Reported per library:

- time: the best of several runs (the machine is shared, so the minimum is
  the least noisy estimate), on one thread by default: with several threads
  on a busy 2-core machine both libraries slow down several-fold, noise
  included (``--threads`` changes it);
- peak tensor memory: the largest total of live tensors allocated during one
  call, measured by watching every PyTorch operator (``PeakTensorMemory``);
- the number of masks returned (the algorithms differ: transformers runs one
  NMS over every mask, bestiary one per crop then one across crops).

Then peak memory for a growing grid (``points_per_side``) at a fixed
``points_per_batch``, for both libraries.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
import skimage.data
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import transformers
from bestiary.pipelines import pipeline as bestiary_pipeline

from tests.plugins.sam.sam_builders import confident_masks
from tests.plugins.sam.sam_memory import PeakTensorMemory

VISION = dict(
    hidden_size=64,
    output_channels=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=256,
    patch_size=16,
    window_size=7,
    global_attn_indexes=[1, 3],
    num_pos_feats=16,
)
PROMPT = dict(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=8)
DECODER = dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4, iou_head_hidden_dim=32)
PROCESSOR = dict(
    size={"longest_edge": 256},
    pad_size={"height": 256, "width": 256},
    mask_size={"longest_edge": 64},
    mask_pad_size={"height": 64, "width": 64},
)


def make_checkpoint(folder: Path) -> Path:
    """Save a seeded random transformers SAM with confident, varied masks (as the tests' ``amg_checkpoint``)."""
    torch.manual_seed(0)
    config = transformers.SamConfig(vision_config=VISION, prompt_encoder_config=PROMPT, mask_decoder_config=DECODER)
    model = transformers.SamModel(config).eval()
    confident_masks(model)
    model.save_pretrained(folder)
    transformers.SamProcessor(transformers.SamImageProcessor(**PROCESSOR)).save_pretrained(folder)
    return folder


def best_time(run, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_bytes(run) -> int:
    return peak_and_result(run)[0]


def peak_and_result(run) -> tuple[int, object]:
    gc.collect()
    with PeakTensorMemory() as meter:
        result = run()
    return meter.peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller grid sweep")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    image = PIL.Image.fromarray(skimage.data.chelsea())  # transformers' pipeline takes PIL images, not arrays
    repeats = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_checkpoint(Path(tmp) / "sam")
        theirs = transformers.pipeline("mask-generation", model=str(folder), device="cpu")
        ours = bestiary_pipeline("mask-generation", model=str(folder))

        print(
            f"SAM segment-everything, random {VISION['image_size']}px model, chelsea {image.width}x{image.height}, "
            f"{args.threads} threads (random weights: mask content is meaningless, the work is real)"
        )
        scenarios = {
            "default thresholds (0.88 IoU, 0.95 stability)": {},
            "keep everything (thresholds 0)": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
        }
        for title, thresholds in scenarios.items():
            settings = dict(points_per_crop=16, points_per_batch=64, **thresholds)
            print(f"\n{title}; 16x16 points, points_per_batch=64")
            print(f"  {'library':<14}{'time (s)':>10}{'peak tensors (MB)':>20}{'masks':>8}")
            for name, generator in (("transformers", theirs), ("bestiary", ours)):
                run = functools.partial(generator, image, **settings)
                seconds, result = best_time(run, repeats)  # the first run warms up
                peak = peak_bytes(run)
                print(f"  {name:<14}{seconds:>10.3f}{peak / 2**20:>20.1f}{len(result['masks']):>8}")

        sides = (8, 16, 32) if args.quick else (8, 16, 32, 64)
        print("\npeak tensor memory (MB) vs grid, points_per_batch=32, pred_iou_thresh=0 (every mask is upscaled);")
        print("the returned masks (bool, full size) are included in the peak and listed below it")
        print(f"  {'points_per_side':<22}" + "".join(f"{side:>10}" for side in sides))
        for name, generator in (("transformers", theirs), ("bestiary", ours)):
            rows = [
                peak_and_result(
                    functools.partial(generator, image, points_per_crop=side, points_per_batch=32, pred_iou_thresh=0.0)
                )
                for side in sides
            ]
            print(f"  {name + ' peak':<22}" + "".join(f"{peak / 2**20:>10.1f}" for peak, _ in rows))
            output_mb = [len(result["masks"]) * image.width * image.height / 2**20 for _, result in rows]
            print(f"  {'  of which output':<22}" + "".join(f"{mb:>10.1f}" for mb in output_mb))

        crops = dict(points_per_crop=8, points_per_batch=64, crops_n_layers=1)
        print("\nwith one crop layer (5 crops), 8x8 points per crop")
        for name, generator in (("transformers", theirs), ("bestiary", ours)):
            run = functools.partial(generator, image, **crops)
            seconds, result = best_time(run, repeats)
            peak = peak_bytes(run)
            print(f"  {name:<14}{seconds:>10.3f}s{peak / 2**20:>10.1f} MB{len(result['masks']):>6} masks")


if __name__ == "__main__":
    main()
