"""Segment everything: bestiary's generator against a plain reference of the published algorithm.

``reference_generate`` below is written from the Segment Anything paper's
automatic mask generator, independently of bestiary_sam.automatic and as
plainly as possible: Python loops, numpy, a greedy NMS and a flood fill. It
calls the model the same way (same crops, same point batches), so the masks
kept after filtering and NMS must be identical, in the same order.
"""

from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_sam")

from bestiary.errors import ProcessingError
from bestiary.pipelines import pipeline
from bestiary_sam import mask_utils
from bestiary_sam.automatic import SamAutomaticMaskGenerator
from bestiary_sam.modeling_sam import SamModel
from bestiary_sam.processing_sam import SamProcessor

from tests.plugins.sam.sam_memory import PeakTensorMemory


# -- the reference ---------------------------------------------------------------------
def crop_boxes_of(height, width, n_layers, overlap_ratio):
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(height, width) * 2 / n)
        crop_w = math.ceil((overlap * (n - 1) + width) / n)
        crop_h = math.ceil((overlap * (n - 1) + height) / n)
        for i in range(n):
            for j in range(n):
                left, top = int((crop_w - overlap) * i), int((crop_h - overlap) * j)
                boxes.append([left, top, min(left + crop_w, width), min(top + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def box_of(mask):
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def box_iou(a, b):
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(records, score_of, threshold):
    order = sorted(range(len(records)), key=lambda i: -score_of(records[i]))  # stable for ties
    kept = []
    for i in order:
        if all(box_iou(records[i]["box"], records[k]["box"]) <= threshold for k in kept):
            kept.append(i)
    return [records[i] for i in kept]


def components(mask):
    """8-connected components of a boolean array: list of lists of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    height, width = mask.shape
    for r in range(height):
        for c in range(width):
            if mask[r, c] and not seen[r, c]:
                queue, pixels = deque([(r, c)]), []
                seen[r, c] = True
                while queue:
                    y, x = queue.popleft()
                    pixels.append((y, x))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, x + dx
                            if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                queue.append((ny, nx))
                found.append(pixels)
    return found


def clean_regions(mask, min_area):
    changed = False
    mask = mask.copy()
    for pixels in components(~mask):  # holes: small background regions are filled
        if len(pixels) < min_area:
            changed = True
            for y, x in pixels:
                mask[y, x] = True
    islands = components(mask)
    small = [pixels for pixels in islands if len(pixels) < min_area]
    if small:
        changed = True
        big = [pixels for pixels in islands if len(pixels) >= min_area] or [max(islands, key=len)]
        mask = np.zeros_like(mask)
        for pixels in big:
            for y, x in pixels:
                mask[y, x] = True
    return mask, changed


@torch.no_grad()
def reference_generate(model, image_processor, image, s):
    height, width = image.shape[:2]
    boxes, layers = crop_boxes_of(height, width, s["crops_n_layers"], s["crop_overlap_ratio"])
    everything = []
    for crop, layer in zip(boxes, layers):
        x0, y0, x1, y1 = crop
        inputs = image_processor(image[y0:y1, x0:x1], return_tensors="pt")
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        crop_h, crop_w = y1 - y0, x1 - x0
        resized_h, resized_w = inputs["reshaped_input_sizes"][0].tolist()
        padded = inputs["pixel_values"].shape[-2:]
        n = int(s["points_per_side"] / s["crop_n_points_downscale_factor"] ** layer)
        grid = [((j + 0.5) / n, (i + 0.5) / n) for i in range(n) for j in range(n)]
        found = []
        for start in range(0, len(grid), s["points_per_batch"]):
            batch = [(gx * crop_w, gy * crop_h) for gx, gy in grid[start : start + s["points_per_batch"]]]
            model_points = torch.tensor(
                [[[x * (resized_w / crop_w), y * (resized_h / crop_h)]] for x, y in batch], dtype=torch.float64
            )
            out = model(
                image_embeddings=embeddings,
                input_points=model_points[None],
                input_labels=torch.ones(1, len(batch), 1, dtype=torch.int64),
                multimask_output=True,
            )
            for p, (px, py) in enumerate(batch):
                for k in range(out.iou_scores.shape[-1]):
                    iou = out.iou_scores[0, p, k].item()
                    if s["pred_iou_thresh"] > 0 and not iou > s["pred_iou_thresh"]:
                        continue
                    logits = F.interpolate(out.pred_masks[0, p, k][None, None], tuple(padded), mode="bilinear")
                    logits = F.interpolate(logits[..., :resized_h, :resized_w], (crop_h, crop_w), mode="bilinear")[0, 0]
                    logits = logits.numpy()
                    inner = np.float32((logits > s["mask_threshold"] + s["stability_score_offset"]).sum())
                    outer = np.float32((logits > s["mask_threshold"] - s["stability_score_offset"]).sum())
                    stability = inner / outer if outer else np.float32("nan")
                    if s["stability_score_thresh"] > 0 and not stability >= s["stability_score_thresh"]:
                        continue
                    mask = logits > s["mask_threshold"]
                    bx0, by0, bx1, by1 = box_of(mask)
                    shifted = [bx0 + x0, by0 + y0, bx1 + x0, by1 + y0]
                    cut = any(
                        abs(a - c) <= s["crop_edge_tolerance"] and abs(a - e) > s["crop_edge_tolerance"]
                        for a, c, e in zip(shifted, crop, [0, 0, width, height])
                    )
                    if cut:
                        continue
                    full = np.zeros((height, width), dtype=bool)
                    full[y0:y1, x0:x1] = mask
                    found.append(
                        {
                            "mask": full,
                            "box": shifted,
                            "iou": np.float32(iou),
                            "stability": stability,
                            "point": (px + x0, py + y0),
                            "crop": crop,
                        }
                    )
        everything += greedy_nms(found, lambda r: r["iou"], s["box_nms_thresh"])
    if len(boxes) > 1:
        everything = greedy_nms(
            everything,
            lambda r: np.float32(1.0) / np.float32((r["crop"][2] - r["crop"][0]) * (r["crop"][3] - r["crop"][1])),
            s["crops_nms_thresh"],
        )
    if s["min_mask_region_area"] > 0:
        for record in everything:
            record["mask"], changed = clean_regions(record["mask"], s["min_mask_region_area"])
            record["box"], record["unchanged"] = box_of(record["mask"]), 0.0 if changed else 1.0
        everything = greedy_nms(everything, lambda r: r["unchanged"], s["box_nms_thresh"])
    return everything


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam(amg_checkpoint):
    return SamModel.from_pretrained(amg_checkpoint), SamProcessor.from_pretrained(amg_checkpoint)


BASE = dict(
    points_per_side=6,
    points_per_batch=10,  # 36 points: the last batch has 6
    pred_iou_thresh=0.5,
    stability_score_thresh=0.5,
    stability_score_offset=1.0,
    mask_threshold=0.0,
    box_nms_thresh=0.7,
    crops_n_layers=0,
    crops_nms_thresh=0.7,
    crop_overlap_ratio=512 / 1500,
    crop_n_points_downscale_factor=1,
    crop_edge_tolerance=20.0,
    min_mask_region_area=0,
)
CROPS = dict(crops_n_layers=1, crop_edge_tolerance=0.0, pred_iou_thresh=0.3, stability_score_thresh=0.3)
CASES = {
    "one crop": dict(),
    "one crop, loose": dict(pred_iou_thresh=0.3, stability_score_thresh=0.3, box_nms_thresh=0.95),
    "crop layer": CROPS,
    "crop layer, strict NMS across crops": dict(CROPS, box_nms_thresh=0.9, crops_nms_thresh=0.5),
    "two crop layers, fewer points deeper": dict(
        CROPS, crops_n_layers=2, crop_n_points_downscale_factor=2, crop_overlap_ratio=0.25
    ),
    "crop layer and small regions": dict(CROPS, min_mask_region_area=100),
    "no filters": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4, points_per_batch=16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kept_masks_equal_the_reference_algorithm(sam, photos, case):
    model, processor = sam
    settings = {**BASE, **CASES[case]}
    image = photos["chelsea"]
    expected = reference_generate(model, processor.image_processor, image, settings)
    got = SamAutomaticMaskGenerator(model, processor, **settings).generate(image)
    assert len(got) == len(expected) > 0
    for index, record in enumerate(expected):
        assert np.array_equal(got.masks[index].numpy(), record["mask"]), index
        assert got.boxes[index].tolist() == record["box"]
        assert got.scores[index].item() == record["iou"]
        assert got.stability_scores[index].item() == pytest.approx(float(record["stability"]), abs=1e-6, nan_ok=True)
        assert got.point_coords[index].tolist() == pytest.approx(list(record["point"]))
        assert got.crop_boxes[index].tolist() == record["crop"]
        assert got.areas[index].item() == int(record["mask"].sum())


@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (0.0, 0.0)], ids=["filtered", "unfiltered"])
def test_one_crop_gives_the_masks_of_transformers_pipeline(amg_checkpoint, sam, photos, thresholds):
    """With one crop, the paper's NMS per crop and transformers' single NMS coincide: same masks, same order."""
    import PIL.Image

    model, processor = sam
    iou, stability = thresholds
    image = photos["coffee"]
    reference = transformers.pipeline("mask-generation", model=str(amg_checkpoint), device="cpu")
    expected = reference(
        PIL.Image.fromarray(image),
        points_per_crop=6,
        points_per_batch=10,
        pred_iou_thresh=iou,
        stability_score_thresh=stability,
        crops_nms_thresh=0.7,
        output_bboxes_mask=True,
    )
    got = SamAutomaticMaskGenerator(
        model,
        processor,
        points_per_side=6,
        points_per_batch=10,
        pred_iou_thresh=iou,
        stability_score_thresh=stability,
        box_nms_thresh=0.7,
    ).generate(image)
    assert len(got) == len(expected["masks"]) > 1
    assert torch.equal(torch.stack(expected["masks"]), got.masks)
    assert torch.equal(expected["bounding_boxes"], got.boxes)
    assert torch.allclose(expected["scores"], got.scores, atol=1e-4)  # transformers' grid points are float32


def test_the_settings_exercise_every_filter(sam, photos):
    """The cases above are not trivial: each stage removes masks, and several survive."""
    model, processor = sam
    generator = SamAutomaticMaskGenerator(model, processor, **BASE)
    image = photos["chelsea"]
    everything = sum(len(batch) for batch in generator.stream(image, pred_iou_thresh=0, stability_score_thresh=0))
    after_iou = sum(len(batch) for batch in generator.stream(image, stability_score_thresh=0))
    after_both = sum(len(batch) for batch in generator.stream(image))
    assert everything == 3 * 36 > after_iou > after_both > len(generator.generate(image)) >= 1
    with_crops = generator.generate(image, **CROPS)
    assert len(with_crops) >= 3 and len({tuple(box) for box in with_crops.crop_boxes.tolist()}) >= 2
    without_cross_crop_nms = generator.generate(
        image, **dict(CASES["crop layer, strict NMS across crops"], crops_nms_thresh=1.0)
    )
    assert len(generator.generate(image, **CASES["crop layer, strict NMS across crops"])) < len(without_cross_crop_nms)
    cleaned = generator.generate(image, **CASES["crop layer and small regions"])
    assert with_crops.areas.tolist() != cleaned.areas.tolist()


def test_every_point_of_a_partial_last_batch_is_kept(sam, photos):
    model, processor = sam
    generator = SamAutomaticMaskGenerator(
        model,
        processor,
        points_per_side=5,
        points_per_batch=8,
        pred_iou_thresh=0,
        stability_score_thresh=0,
        box_nms_thresh=1.0,
    )
    batches = list(generator.stream(photos["coffee"]))
    assert [batch.points_in_batch for batch in batches] == [8, 8, 8, 1]
    result = generator.generate(photos["coffee"])
    assert len(result) == 25 * 3
    grid = {
        tuple(point)
        for point in (mask_utils.build_point_grid(5) * torch.tensor([120.0, 80.0], dtype=torch.float64)).tolist()
    }
    counted = {}
    for point in result.point_coords.tolist():
        counted[tuple(point)] = counted.get(tuple(point), 0) + 1
    assert set(counted) == grid and set(counted.values()) == {3}


def test_streamed_batches_add_up_to_the_generated_masks(sam, photos):
    model, processor = sam
    settings = {**BASE, "box_nms_thresh": 1.0}
    generator = SamAutomaticMaskGenerator(model, processor, **settings)
    streamed = list(generator.stream(photos["chelsea"]))
    assert sum(batch.points_in_batch for batch in streamed) == 36
    generated = generator.generate(photos["chelsea"])
    assert len(generated) == sum(len(batch) for batch in streamed)
    order = torch.cat([batch.scores for batch in streamed]).argsort(descending=True, stable=True)
    masks = torch.cat([batch.masks for batch in streamed])[order]
    assert torch.equal(generated.masks, masks)


class RectangleModel(torch.nn.Module):
    """A stand-in for SAM whose first mask for each grid point is a chosen rectangle with a chosen score.

    For a 32x32 image and a 2x2 grid: B (point 8, 8) scores 0.5, A (24, 8)
    0.7 and overlaps B, C (8, 24) 0.9 and overlaps A but not B. Batches of
    two points see B and A first, so B is suppressed until C arrives and
    suppresses A: B must come back.
    """

    RECTANGLES = {(8, 8): ((0, 0, 9, 9), 0.5), (24, 8): ((2, 0, 11, 9), 0.7), (8, 24): ((4, 0, 13, 9), 0.9)}

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def get_image_embeddings(self, pixel_values):
        return torch.zeros(pixel_values.shape[0], 1, 1, 1)

    def forward(self, image_embeddings, input_points, input_labels, multimask_output=True):
        self.calls += 1
        count = input_points.shape[1]
        masks = torch.full((1, count, 3, 32, 32), -10.0)
        scores = torch.zeros(1, count, 3)
        for index, (x, y) in enumerate(input_points[0, :, 0].tolist()):
            found = self.RECTANGLES.get((round(x), round(y)))
            if found:
                (x0, y0, x1, y1), score = found
                masks[0, index, 0, y0 : y1 + 1, x0 : x1 + 1] = 10.0
                scores[0, index, 0] = score
        return SimpleNamespace(pred_masks=masks, iou_scores=scores)


def test_a_mask_suppressed_early_comes_back_when_its_suppressor_is_suppressed():
    from bestiary_sam.image_processing_sam import SamImageProcessor

    model = RectangleModel()
    processor = SamImageProcessor(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32})
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    settings = {**BASE, "points_per_side": 2, "points_per_batch": 2, "pred_iou_thresh": 0.1, "box_nms_thresh": 0.5}
    result = SamAutomaticMaskGenerator(model, processor, **settings).generate(image)
    assert model.calls == 3  # two batches, then the first again to recover B
    assert result.boxes.tolist() == [[4, 0, 13, 9], [0, 0, 9, 9]]
    expected = reference_generate(model, processor, image, settings)
    assert [record["box"] for record in expected] == result.boxes.tolist()
    assert all(np.array_equal(record["mask"], mask.numpy()) for record, mask in zip(expected, result.masks))


def test_peak_memory_does_not_grow_with_the_grid(sam, photos):
    model, processor = sam
    image = photos["chelsea"]
    generator = SamAutomaticMaskGenerator(
        model, processor, points_per_batch=8, pred_iou_thresh=0, stability_score_thresh=0
    )

    def peak(**settings) -> int:
        with PeakTensorMemory() as meter:
            for _ in generator.stream(image, **settings):  # every mask is upscaled and kept: the worst case
                pass
        return meter.peak

    def peak_generate(**settings) -> int:
        with PeakTensorMemory() as meter:
            result = generator.generate(image, pred_iou_thresh=0.5, stability_score_thresh=0.5, **settings)
        return meter.peak, result

    small, large = peak(points_per_side=4), peak(points_per_side=12)  # 16 vs 144 points
    assert large <= small * 1.05
    unbounded = peak(points_per_side=12, points_per_batch=144)  # the meter does see a larger batch
    assert unbounded > 4 * large
    (small_generate, _), (large_generate, result) = peak_generate(points_per_side=4), peak_generate(points_per_side=12)
    kept_bytes = result.masks.numel()  # the output itself (bool masks) is allowed to grow with the kept masks
    assert large_generate <= small_generate * 1.05 + 2 * kept_bytes


def test_rle_output_and_records(sam, photos):
    model, processor = sam
    generator = SamAutomaticMaskGenerator(model, processor, **{**BASE, **CASES["crop layer"]})
    binary = generator.generate(photos["chelsea"])
    rle = generator.generate(photos["chelsea"], output_mode="rle")
    assert rle.masks is None and len(rle.rles) == len(binary)
    for index, code in enumerate(rle.rles):
        assert torch.equal(mask_utils.rle_to_mask(code), binary.masks[index])
        assert mask_utils.area_from_rle(code) == binary.areas[index]
    record = rle.records()[0]
    x0, y0, x1, y1 = binary.boxes[0].tolist()
    assert record["bbox"] == [x0, y0, x1 - x0, y1 - y0] and record["segmentation"] == rle.rles[0]
    assert set(record) == {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
    }


def test_mask_utils_agree_with_transformers_helpers():
    from transformers.models.sam import image_processing_sam as reference

    masks = torch.rand(6, 13, 17, generator=torch.Generator().manual_seed(0)) > 0.6
    masks[2] = False
    masks[3] = True
    assert torch.equal(mask_utils.masks_to_boxes(masks), reference._batched_mask_to_box(masks))
    assert [mask_utils.mask_to_rle(mask) for mask in masks] == reference._mask_to_rle(masks)
    grid = reference._build_point_grid(7).double()
    assert torch.allclose(mask_utils.build_point_grid(7), grid, atol=1e-7)
    expected_boxes, expected_layers = reference._generate_per_layer_crops(2, 0.3, (300, 451))
    assert mask_utils.generate_crop_boxes((300, 451), 2, 0.3) == (expected_boxes, expected_layers)


def test_model_method_and_default_processor(sam, photos):
    model, processor = sam
    settings = dict(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    with_processor = model.generate_masks(photos["chelsea"], processor, **settings)
    default = model.generate_masks(photos["chelsea"], **settings)  # a processor sized from the model's config
    assert torch.equal(with_processor.masks, default.masks)


def test_pipeline_wraps_the_model_api(amg_checkpoint, sam, photos):
    model, processor = sam
    generator = pipeline("mask-generation", model=str(amg_checkpoint))
    settings = dict(points_per_crop=4, points_per_batch=5, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    out = generator(photos["chelsea"], output_rle_mask=True, output_bboxes_mask=True, **settings)
    direct = SamAutomaticMaskGenerator(
        model, processor, points_per_side=4, points_per_batch=5, pred_iou_thresh=0.5, stability_score_thresh=0.5
    ).generate(photos["chelsea"])
    assert set(out) == {"masks", "scores", "rle_mask", "bounding_boxes"}
    assert len(out["masks"]) == len(direct) and torch.equal(torch.stack(out["masks"]), direct.masks)
    assert torch.equal(out["scores"], direct.scores) and torch.equal(out["bounding_boxes"], direct.boxes)
    both = generator([photos["chelsea"], photos["coffee"]], **settings)
    assert len(both) == 2 and both[1]["masks"][0].shape == (80, 120)
    with pytest.raises(ProcessingError, match="unknown argument 'points_per_crops'"):
        generator(photos["chelsea"], points_per_crops=4)


def test_settings_errors_name_the_argument(sam, photos):
    model, processor = sam
    with pytest.raises(ProcessingError, match="points_per_batch"):
        SamAutomaticMaskGenerator(model, processor, points_per_batch=0)
    with pytest.raises(ProcessingError, match="unknown argument 'crop_n_layers'"):
        SamAutomaticMaskGenerator(model, processor, crop_n_layers=1)
    with pytest.raises(ProcessingError, match="crop_n_points_downscale_factor"):
        SamAutomaticMaskGenerator(
            model, processor, points_per_side=2, crops_n_layers=2, crop_n_points_downscale_factor=2
        )
    with pytest.raises(ProcessingError, match="one image per call"):
        SamAutomaticMaskGenerator(model, processor).generate([photos["chelsea"], photos["coffee"]])
    with pytest.raises(ProcessingError, match="SamProcessor or SamImageProcessor"):
        SamAutomaticMaskGenerator(model, processor=object())
