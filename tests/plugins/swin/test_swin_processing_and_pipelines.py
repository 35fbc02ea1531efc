"""Swin's image processor against transformers on real photos, and the two image pipelines on a tiny Swin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_swin")

from bestiary.auto import AutoImageProcessor  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary.pipelines import pipeline  # noqa: E402
from bestiary_swin.image_processing_swin import SwinImageProcessor  # noqa: E402

TINY = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)

# Microsoft's swin-tiny-patch4-window7-224 preprocessor_config.json, then variants of it.
SWIN_TINY_SETTINGS = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}
SETTINGS = {
    "swin-tiny": SWIN_TINY_SETTINGS,
    "non-square-bilinear": {**SWIN_TINY_SETTINGS, "size": {"height": 192, "width": 256}, "resample": 2},
    "no-normalize": {**SWIN_TINY_SETTINGS, "do_normalize": False, "size": 96},
    "defaults-only": {"image_processor_type": "ViTImageProcessor"},
    "no-resize": {**SWIN_TINY_SETTINGS, "do_resize": False},
    "grey-to-rgb": {**SWIN_TINY_SETTINGS, "do_convert_rgb": True, "size": 128},
}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "chelsea": skimage.data.chelsea(),  # 300x451 RGB
        "coffee": skimage.data.coffee(),  # 400x600 RGB
        "astronaut": skimage.data.astronaut(),  # 512x512 RGB
        "camera": skimage.data.camera()[..., None],  # grey
    }


def write_checkpoint_folder(folder: Path, settings: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    transformers.SwinConfig(**TINY).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_pixel_values_match_transformers_on_photos(tmp_path, photos, name):
    folder = write_checkpoint_folder(tmp_path / name, SETTINGS[name])
    reference = transformers.AutoImageProcessor.from_pretrained(folder)
    ours = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(ours, SwinImageProcessor)
    if name == "no-resize":
        images = [photos["astronaut"]]
    elif name == "grey-to-rgb":
        images = [photos["camera"], photos["chelsea"]]
    else:
        images = [photos[key] for key in ("chelsea", "coffee", "astronaut")]
    expected = reference(images, return_tensors="pt")["pixel_values"]
    actual = ours(images, return_tensors="pt")["pixel_values"]
    assert expected.shape == actual.shape
    assert torch.equal(expected, actual)
    if name not in ("no-resize", "grey-to-rgb"):
        pil = ours(PIL.Image.fromarray(photos["chelsea"]), return_tensors="pt")["pixel_values"]
        assert torch.equal(pil, actual[:1])


def test_processor_round_trip_keeps_the_transformers_type(tmp_path):
    folder = write_checkpoint_folder(tmp_path / "in", SWIN_TINY_SETTINGS)
    ours = SwinImageProcessor.from_pretrained(folder)
    ours.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "ViTImageProcessor"
    assert written["resample"] == 3 and written["size"] == {"height": 224, "width": 224}
    reference = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(reference).__name__ == "ViTImageProcessor"


# -- pipelines ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("swin-classifier")
    torch.manual_seed(0)
    config = transformers.SwinConfig(**TINY, id2label={i: f"class-{i}" for i in range(7)})
    model = transformers.SwinForImageClassification(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_image_classification_matches_transformers(classifier_folder, photos):
    ours = pipeline("image-classification", str(classifier_folder))
    reference = transformers.pipeline("image-classification", model=str(classifier_folder))
    image = photos["chelsea"]
    expected = reference(PIL.Image.fromarray(image), top_k=3)
    actual = ours(image, top_k=3)
    assert [entry["label"] for entry in actual] == [entry["label"] for entry in expected]
    assert np.allclose([e["score"] for e in actual], [e["score"] for e in expected], atol=1e-5)
    assert len(ours(image)) == 5  # transformers' default top_k
    assert len(ours(image, top_k=50)) == 7  # capped at the number of labels
    sigmoid = ours(image, function_to_apply="sigmoid", top_k=1)[0]["score"]
    raw = ours(image, function_to_apply="none", top_k=1)[0]["score"]
    assert abs(sigmoid - 1 / (1 + np.exp(-raw))) < 1e-5


def test_image_classification_batches_lists_with_the_same_results(classifier_folder, photos):
    ours = pipeline("image-classification", str(classifier_folder), batch_size=3)
    images = [photos["chelsea"], photos["coffee"], PIL.Image.fromarray(photos["astronaut"]), photos["camera"]] * 2
    batched = ours(images, top_k=2)
    single = [ours(image, top_k=2) for image in images]
    assert len(batched) == len(images)
    for one, other in zip(batched, single):
        assert [e["label"] for e in one] == [e["label"] for e in other]
        assert np.allclose([e["score"] for e in one], [e["score"] for e in other], atol=1e-5)


def test_image_classification_argument_errors(classifier_folder, photos):
    ours = pipeline("image-classification", str(classifier_folder))
    with pytest.raises(ProcessingError, match="top_k must be a positive integer"):
        ours(photos["chelsea"], top_k=0)
    with pytest.raises(ProcessingError, match="function_to_apply='max' is not valid"):
        ours(photos["chelsea"], function_to_apply="max")
    with pytest.raises(TypeError, match="unknown arguments"):
        ours(photos["chelsea"], pool=True)


def test_image_feature_extraction_matches_transformers(classifier_folder, photos):
    ours = pipeline("image-feature-extraction", str(classifier_folder))
    reference = transformers.pipeline("image-feature-extraction", model=str(classifier_folder))
    image = PIL.Image.fromarray(photos["coffee"])
    tokens, pooled = ours(image), ours(image, pool=True)
    assert np.array(tokens).shape == (1, 16, 32) and np.array(pooled).shape == (1, 32)
    assert np.abs(np.array(tokens) - np.array(reference(image))).max() <= 1e-4
    assert np.abs(np.array(pooled) - np.array(reference(image, pool=True))).max() <= 1e-4
    tensors = ours([image, image], return_tensors=True, batch_size=2)
    assert isinstance(tensors[0], torch.Tensor) and tensors[0].shape == (1, 16, 32)


def test_image_feature_extraction_with_a_backbone(classifier_folder, photos):
    from bestiary.auto import AutoBackbone

    backbone = AutoBackbone.from_pretrained(classifier_folder, out_indices=[1, 2])
    processor = AutoImageProcessor.from_pretrained(classifier_folder)
    extractor = pipeline("image-feature-extraction", backbone, image_processor=processor)
    tokens = extractor(photos["chelsea"], return_tensors=True)
    pooled = extractor(photos["chelsea"], pool=True, return_tensors=True)
    # The last selected map (stage2: stride 8 on 32x32 pixels, 32 channels) as 4x4 = 16 tokens.
    assert tokens.shape == (1, 16, 32) and pooled.shape == (1, 32)
    assert torch.allclose(tokens.mean(dim=1), pooled, atol=1e-6)


def test_cookbook_script_draws_the_stage_maps(tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parents[3] / "cookbook" / "vision" / "swin_feature_maps.py"
    spec = importlib.util.spec_from_file_location("swin_feature_maps", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoint = tmp_path / "tiny-swin"
    torch.manual_seed(0)
    tiny = dict(TINY, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7)
    transformers.SwinBackbone(transformers.SwinConfig(**tiny)).save_pretrained(checkpoint)
    output = module.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "maps.png")])
    picture = PIL.Image.open(output)
    assert picture.size == (6 * module.TILE[0], 2 * (module.TILE[1] + module.LABEL_HEIGHT))
