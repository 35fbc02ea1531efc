"""ImageProcessor: pixel parity with transformers 5.24.0, loading/saving, inputs and errors.

Reference outputs come from transformers' default image processors, which in
v5 are the torchvision ones (checked below). bestiary runs the same torchvision
kernels in the same order with the same float32 arithmetic (including the
fused rescale+normalize), so uint8 inputs match bit for bit: the tolerance is
0 (``torch.equal``). Float64 inputs are resized in float64 by both and compared
exactly too. Only the BOX/HAMMING filters, which transformers' torchvision
processors cannot run, are compared with its PIL backend, within 1e-5 (PIL
resizes in uint8 the same way; the numpy normalization rounds differently).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
from pathlib import Path
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")

from bestiary.errors import HubError, ProcessingError  # noqa: E402
from bestiary.processing import image_utils  # noqa: E402
from bestiary.processing.batch_feature import BatchFeature  # noqa: E402
from bestiary.processing.image_processing import ImageProcessor  # noqa: E402

# -- reference images (real photos shipped with scikit-image) -------------------------------


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "chelsea": skimage.data.chelsea(),  # 300x451 RGB
        "astronaut": skimage.data.astronaut(),  # 512x512 RGB
        "coffee": skimage.data.coffee(),  # 400x600 RGB
        "camera": skimage.data.camera()[..., None],  # 512x512x1 grey (transformers rejects 2-D arrays)
    }


def save_reference(tmp_path: Path, processor) -> Path:
    """Save a transformers processor's preprocessor_config.json; return the folder."""
    folder = tmp_path / type(processor).__name__
    processor.save_pretrained(folder)
    return folder


def reference_and_ours(tmp_path: Path, reference, cls=ImageProcessor):
    """Return (transformers processor, bestiary processor) read from the same preprocessor_config.json."""
    folder = save_reference(tmp_path, reference)
    return reference, cls.from_pretrained(folder)


def pixel_values(processor, images, **kwargs) -> torch.Tensor:
    """Return the stacked pixel_values a processor (transformers' or bestiary's) gives for ``images``."""
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


def assert_same_pixels(expected, actual, atol: float = 0.0) -> None:
    if isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual)
        for e, a in zip(expected, actual):
            assert_same_pixels(e, a, atol)
        return
    assert tuple(expected.shape) == tuple(actual.shape)
    assert expected.dtype == actual.dtype
    if atol == 0.0:
        assert torch.equal(expected, actual), f"max diff {(expected.double() - actual.double()).abs().max()}"
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# -- transformers' default backend --------------------------------------------------------


def test_transformers_default_image_processor_is_torchvision(tmp_path):
    folder = save_reference(tmp_path, transformers.ViTImageProcessor())
    loaded = transformers.AutoImageProcessor.from_pretrained(folder)
    assert loaded.backend == "torchvision"


# -- pixel parity --------------------------------------------------------------------------

PARITY_CONFIGS = {
    "vit-exact-size": lambda t: t.ViTImageProcessor(),
    "clip-shortest-edge-crop": lambda t: t.CLIPImageProcessor(),
    "vit-no-normalize": lambda t: t.ViTImageProcessor(do_normalize=False),
    "vit-no-rescale": lambda t: t.ViTImageProcessor(do_rescale=False),
    "vit-nearest": lambda t: t.ViTImageProcessor(resample=0, size={"height": 200, "width": 150}),
    "vit-lanczos": lambda t: t.ViTImageProcessor(resample=1),
    "vit-bicubic-upscale": lambda t: t.ViTImageProcessor(resample=3, size={"height": 640, "width": 700}),
    "shortest-and-longest-edge": lambda t: t.ViTImageProcessor(size={"shortest_edge": 200, "longest_edge": 260}),
    "max-height-width": lambda t: t.ViTImageProcessor(size={"max_height": 180, "max_width": 250}),
    "clip-crop-larger-than-image": lambda t: t.CLIPImageProcessor(
        size={"shortest_edge": 97}, crop_size={"height": 120, "width": 101}
    ),
    "clip-imagenet-stats": lambda t: t.CLIPImageProcessor(
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=2
    ),
}


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_pixel_values_match_transformers(tmp_path, photos, name):
    reference, ours = reference_and_ours(tmp_path, PARITY_CONFIGS[name](transformers))
    for image in (photos["chelsea"], photos["camera"]):
        actual = pixel_values(ours, image)
        if image.shape[-1] == 1 and not reference.do_convert_rgb and reference.do_normalize:
            # transformers fails to normalize one channel with three means; bestiary gives
            # the result of the same picture as three equal channels.
            image = np.repeat(image, 3, axis=-1)
        expected = pixel_values(reference, image)
        assert_same_pixels(expected, actual)


def test_do_resize_false_keeps_each_size(tmp_path, photos):
    reference, ours = reference_and_ours(tmp_path, transformers.ViTImageProcessor(do_resize=False))
    batch = [photos["chelsea"], photos["coffee"]]
    expected = reference(batch)["pixel_values"]
    actual = ours(batch)["pixel_values"]
    assert [tuple(t.shape) for t in actual] == [(3, 300, 451), (3, 400, 600)]
    assert_same_pixels(list(expected), actual)


def test_input_kinds_match_transformers(tmp_path, photos):
    reference, ours = reference_and_ours(tmp_path, transformers.CLIPImageProcessor())
    hwc = photos["astronaut"]
    alpha = np.linspace(0, 255, hwc.shape[0] * hwc.shape[1]).reshape(hwc.shape[:2]).astype(np.uint8)
    inputs = {
        "numpy-hwc": hwc,
        "numpy-chw": np.ascontiguousarray(hwc.transpose(2, 0, 1)),
        "pil": PIL.Image.fromarray(hwc),
        "pil-grey": PIL.Image.fromarray(photos["camera"][..., 0]),
        "pil-rgba": PIL.Image.fromarray(np.dstack([hwc, alpha])),
        "tensor-chw": torch.from_numpy(hwc).permute(2, 0, 1).contiguous(),
        "tensor-hwc": torch.from_numpy(hwc),
    }
    for label, image in inputs.items():
        expected = pixel_values(reference, image)
        actual = pixel_values(ours, image)
        assert_same_pixels(expected, actual)
    # bestiary also takes a 2-D grey array (transformers asks for a channel axis).
    grey = pixel_values(ours, photos["camera"][..., 0])
    assert_same_pixels(pixel_values(reference, photos["camera"]), grey)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_input_matches_transformers(tmp_path, photos, dtype):
    reference, ours = reference_and_ours(tmp_path, transformers.ViTImageProcessor(do_rescale=False, resample=3))
    image = (photos["coffee"] / 255.0).astype(dtype)
    expected = pixel_values(reference, image)
    actual = pixel_values(ours, image)
    assert_same_pixels(expected, actual)


def test_float_input_without_normalize_keeps_dtype_like_transformers(tmp_path, photos):
    reference, ours = reference_and_ours(tmp_path, transformers.ViTImageProcessor(do_rescale=False, do_normalize=False))
    image = photos["chelsea"].astype(np.float64) / 255.0
    assert_same_pixels(pixel_values(reference, image), pixel_values(ours, image))


def test_file_paths_and_batches_match_transformers(tmp_path, photos):
    reference, ours = reference_and_ours(tmp_path, transformers.CLIPImageProcessor())
    png = tmp_path / "chelsea.png"
    jpeg = tmp_path / "coffee.jpg"
    PIL.Image.fromarray(photos["chelsea"]).save(png)
    PIL.Image.fromarray(photos["coffee"]).save(jpeg, quality=90)
    batch = [str(png), str(jpeg), photos["astronaut"]]
    expected = pixel_values(reference, batch)
    assert_same_pixels(expected, pixel_values(ours, batch))
    # Path objects work as well as strings.
    assert_same_pixels(expected[:1], pixel_values(ours, png))


def test_four_d_batch_and_numpy_output(tmp_path, photos):
    reference, ours = reference_and_ours(tmp_path, transformers.ViTImageProcessor())
    batch = np.stack([photos["astronaut"], photos["astronaut"][::-1].copy()])
    expected = reference(batch, return_tensors="np")["pixel_values"]
    actual = ours(batch, return_tensors="np")["pixel_values"]
    assert isinstance(actual, np.ndarray) and actual.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("resample", [4, 5])
def test_box_and_hamming_match_transformers_pil_backend(tmp_path, photos, resample):
    # transformers' torchvision processors cannot run these filters; its PIL backend can.
    reference = transformers.ViTImageProcessorPil(resample=resample)
    ours = ImageProcessor.from_pretrained(save_reference(tmp_path, reference))
    expected = pixel_values(reference, photos["chelsea"])
    actual = pixel_values(ours, photos["chelsea"])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_sam_style_longest_edge_and_pad_matches_transformers(tmp_path, photos):
    reference = transformers.SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    ours = ImageProcessor.from_pretrained(save_reference(tmp_path, reference))
    assert ours.do_pad and ours.size == {"longest_edge": 256}
    batch = [photos["chelsea"], photos["coffee"]]
    assert_same_pixels(pixel_values(reference, batch), pixel_values(ours, batch))


class ConvNextStyleProcessor(ImageProcessor):
    """What a plugin writes for ConvNeXt: one field and one overridden step."""

    transformers_class = "ConvNextImageProcessor"
    size: dict[str, int] | None = {"shortest_edge": 384}
    crop_pct: float = 224 / 256

    def resize(self, image, size, resample=None, antialias=True):
        shortest = size["shortest_edge"]
        if shortest >= 384:  # warp, no crop
            return super().resize(image, {"height": shortest, "width": shortest}, resample)
        image = super().resize(image, {"shortest_edge": int(shortest / self.crop_pct)}, resample)
        return self.center_crop(image, {"height": shortest, "width": shortest})


@pytest.mark.parametrize("shortest_edge", [224, 384])
def test_subclass_overriding_resize_matches_convnext(tmp_path, photos, shortest_edge):
    reference, ours = reference_and_ours(
        tmp_path, transformers.ConvNextImageProcessor(size={"shortest_edge": shortest_edge}), ConvNextStyleProcessor
    )
    assert ours.crop_pct == pytest.approx(reference.crop_pct)
    for image in (photos["chelsea"], photos["astronaut"]):
        assert_same_pixels(pixel_values(reference, image), pixel_values(ours, image))
    saved = ours.save_pretrained(tmp_path / "ours")[0]
    assert json.loads(saved.read_text())["image_processor_type"] == "ConvNextImageProcessor"


def test_per_call_overrides_do_not_change_the_processor(photos):
    processor = ImageProcessor()
    out = processor(photos["chelsea"], size={"height": 32, "width": 48}, do_normalize=False, return_tensors="pt")
    assert out.pixel_values.shape == (1, 3, 32, 48)
    assert processor.size == {"height": 224, "width": 224} and processor.do_normalize
    with pytest.raises(ProcessingError, match="do_resise.*do_resize"):
        processor(photos["chelsea"], do_resise=False)


def test_pad_to_multiple_and_mask(photos):
    processor = ImageProcessor(do_resize=False, do_pad=True, pad_to_multiple_of=32, do_normalize=False)
    out = processor([photos["chelsea"], photos["coffee"][:100]], return_tensors="pt")
    assert out.pixel_values.shape == (2, 3, 320, 608)
    padded, masks = processor.pad([torch.ones(3, 5, 7)], pad_size={"height": 8, "width": 9}, return_mask=True)
    assert padded[0].shape == (3, 8, 9) and padded[0][:, 5:, :].abs().sum() == 0
    assert masks[0].sum() == 35 and masks[0].dtype == torch.int64
    with pytest.raises(ProcessingError, match="larger"):
        processor.pad([torch.ones(3, 10, 10)], pad_size={"height": 8, "width": 9})


# -- channel layout --------------------------------------------------------------------------


def test_channel_order_override_and_errors(caplog):
    processor = ImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)
    ambiguous = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    with caplog.at_level(logging.WARNING):
        first = processor(ambiguous)["pixel_values"][0]
    assert first.shape == (3, 5, 3) and "ambiguous" in caplog.text
    last = processor(ambiguous, input_data_format="channels_last")["pixel_values"][0]
    assert torch.equal(last, torch.from_numpy(ambiguous).permute(2, 0, 1))
    with pytest.raises(ProcessingError, match=r"channel axis.*\(5, 7, 9\).*input_data_format"):
        processor(np.zeros((5, 7, 9), dtype=np.uint8))
    with pytest.raises(ProcessingError, match="input_data_format"):
        processor(ambiguous, input_data_format="sideways")


# -- URLs and files ---------------------------------------------------------------------------

URL = "https://example.invalid/cat.png"


def test_url_offline_error_names_the_url(photos, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the first half checks a failed fetch, so fetching is on
    processor = ImageProcessor()
    failure = urllib.error.URLError("network is unreachable")
    with mock.patch.object(image_utils, "_http_get", side_effect=failure) as fetch:
        with pytest.raises(ProcessingError, match="https://example.invalid/cat.png"):
            processor(URL)
    fetch.assert_called_once()
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}), mock.patch.object(image_utils, "_http_get") as fetch:
        with pytest.raises(ProcessingError, match="https://example.invalid/cat.png.*network access is off"):
            processor([photos["chelsea"], URL])
    fetch.assert_not_called()


def test_url_is_fetched_and_decoded(tmp_path, photos):
    path = tmp_path / "cat.png"
    PIL.Image.fromarray(photos["chelsea"]).save(path)
    processor = ImageProcessor()
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "0"}), mock.patch.object(
        image_utils, "_http_get", return_value=path.read_bytes()
    ):
        from_url = processor(URL, return_tensors="pt").pixel_values
    assert torch.equal(from_url, processor(photos["chelsea"], return_tensors="pt").pixel_values)


def test_missing_and_unreadable_image_files_are_named(tmp_path):
    processor = ImageProcessor()
    with pytest.raises(ProcessingError, match="nope.png.*does not exist"):
        processor(str(tmp_path / "nope.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ProcessingError, match="broken.jpg.*not a readable image"):
        processor(broken)
    with pytest.raises(ProcessingError, match="dict"):
        processor({"not": "an image"})


# -- loading and saving -----------------------------------------------------------------------


def test_save_load_round_trip_keeps_unknown_keys(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    data = {
        **json.loads(transformers.CLIPImageProcessor().to_json_string()),
        "processor_class": "CLIPProcessor",
        "some_future_key": {"nested": [1, 2]},
    }
    (source / "preprocessor_config.json").write_text(json.dumps(data))
    loaded = ImageProcessor.from_pretrained(source)
    assert loaded.some_future_key == {"nested": [1, 2]}
    written = json.loads(loaded.save_pretrained(tmp_path / "out")[0].read_text())
    for key in ("processor_class", "some_future_key", "image_processor_type", "size", "crop_size", "image_mean"):
        assert written[key] == data[key]
    again = ImageProcessor.from_pretrained(tmp_path / "out")
    assert again.to_dict() == loaded.to_dict()
    assert list(written) == sorted(written)


def test_kwargs_override_loaded_values(tmp_path):
    folder = save_reference(tmp_path, transformers.CLIPImageProcessor())
    loaded = ImageProcessor.from_pretrained(folder, do_center_crop=False, size=128, local_files_only=True)
    assert loaded.do_center_crop is False
    assert loaded.size == {"height": 128, "width": 128}  # an int means a square unless default_to_square=False
    with pytest.raises(ProcessingError, match="crop_szie.*crop_size"):
        ImageProcessor.from_pretrained(folder, crop_szie=3)


def test_bestiary_saved_config_loads_in_transformers(tmp_path, photos):
    ours = ImageProcessor(
        size={"shortest_edge": 200}, do_center_crop=True, crop_size={"height": 180, "width": 190}, resample=3
    )
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["image_processor_type"] == "ViTImageProcessor"
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "ViTImageProcessor"
    assert_same_pixels(pixel_values(theirs, photos["coffee"]), pixel_values(ours, photos["coffee"]))


def test_loaded_type_key_is_written_back(tmp_path):
    folder = save_reference(tmp_path, transformers.CLIPImageProcessor())
    ImageProcessor.from_pretrained(folder).save_pretrained(tmp_path / "out")
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")).__name__ == "CLIPImageProcessor"


def test_legacy_feature_extractor_type_key(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "do_resize": True})
    )
    loaded = ImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"height": 224, "width": 224}
    assert loaded.to_dict()["image_processor_type"] == "ViTImageProcessor"
    assert "feature_extractor_type" not in loaded.to_dict()


def test_processor_config_json_takes_precedence(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 10, "width": 10}}))
    (tmp_path / "processor_config.json").write_text(
        json.dumps({"image_processor": {"size": {"height": 20, "width": 30}}, "processor_class": "X"})
    )
    assert ImageProcessor.from_pretrained(tmp_path).size == {"height": 20, "width": 30}


def test_validation_errors_name_the_field_and_the_file(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"size": {"height": 224}}))
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json.*'size'.*height.*width"):
        ImageProcessor.from_pretrained(tmp_path)
    path.write_text(json.dumps({"resample": 9}))
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json.*'resample'"):
        ImageProcessor.from_pretrained(tmp_path)
    path.write_text(json.dumps({"do_center_crop": True}))
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json.*crop_size"):
        ImageProcessor.from_pretrained(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ProcessingError, match=r"preprocessor_config\.json is not valid JSON"):
        ImageProcessor.from_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubError, match="preprocessor_config.json"):
        ImageProcessor.from_pretrained(empty)


def test_constructor_and_assignment_errors_name_the_field():
    with pytest.raises(ProcessingError, match=r"'size'.*keys"):
        ImageProcessor(size={"depth": 3})
    processor = ImageProcessor()
    with pytest.raises(ProcessingError, match=r"'image_std'.*0"):
        processor.image_std = [0.5, 0.0, 0.5]
    processor.do_center_crop = True  # checked when used, so settings can be changed one at a time
    with pytest.raises(ProcessingError, match="do_center_crop is true but crop_size is not set"):
        processor(np.zeros((8, 8, 3), dtype=np.uint8))
    processor.crop_size = 4
    assert processor(np.zeros((8, 8, 3), dtype=np.uint8), return_tensors="pt").pixel_values.shape == (1, 3, 4, 4)


def test_resample_accepts_names_and_enums():
    assert ImageProcessor(resample="bicubic").resample == 3
    assert ImageProcessor(resample=PIL.Image.Resampling.LANCZOS).resample == 1
    from torchvision.transforms import InterpolationMode

    assert ImageProcessor(resample=InterpolationMode.NEAREST_EXACT).resample == 0


def test_save_is_atomic(tmp_path):
    processor = ImageProcessor()
    path = processor.save_pretrained(tmp_path)[0]
    before = path.read_text()
    with mock.patch("os.replace", side_effect=OSError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            ImageProcessor(do_resize=False).save_pretrained(tmp_path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocessor_config.json"]


# -- BatchFeature ------------------------------------------------------------------------------


def test_batch_feature_access_and_to():
    batch = BatchFeature(
        {"pixel_values": [torch.zeros(3, 2, 2), torch.ones(3, 2, 2)], "mask": [[1, 0], [1, 1]]}, tensor_type="pt"
    )
    assert isinstance(batch, dict) and batch.pixel_values.shape == (2, 3, 2, 2)
    moved = batch.to(torch.float16)
    assert moved.pixel_values.dtype == torch.float16 and moved.mask.dtype == torch.int64
    assert batch.to("cpu", dtype=torch.float32).pixel_values.dtype == torch.float32
    with pytest.raises(AttributeError, match="missing"):
        batch.missing
    with pytest.raises(ProcessingError, match="pixel_values.*return_tensors=None"):
        BatchFeature({"pixel_values": [torch.zeros(3, 2, 2), torch.zeros(3, 4, 4)]}, tensor_type="pt")
    import pickle

    assert pickle.loads(pickle.dumps(batch)).keys() == batch.keys()


def test_loads_from_a_prefilled_hub_cache_offline(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--tiny-vit"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "preprocessor_config.json").write_text(transformers.CLIPImageProcessor().to_json_string())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ImageProcessor.from_pretrained("org/tiny-vit", cache_dir=tmp_path / "cache")
    assert loaded.size == {"shortest_edge": 224} and loaded.transformers_type() == "CLIPImageProcessor"
    with pytest.raises(HubError, match="preprocessor_config.json.*org/other"):
        ImageProcessor.from_pretrained("org/other", cache_dir=tmp_path / "cache")
