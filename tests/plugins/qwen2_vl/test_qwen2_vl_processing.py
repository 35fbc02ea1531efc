"""Qwen2-VL image, video and multimodal processors against transformers 5.24.0, their files, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_qwen2_vl")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary_qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: E402
from bestiary_qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor  # noqa: E402
from bestiary_qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor  # noqa: E402

from tests.plugins.qwen2_vl.qwen2_vl_builders import photo, video  # noqa: E402

LIMITS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}


def assert_same(expected, got, keys) -> None:
    for key in keys:
        a, b = torch.as_tensor(expected[key]), torch.as_tensor(got[key])
        assert a.shape == b.shape, key
        assert torch.equal(a, b) if not a.is_floating_point() else (a - b).abs().max().item() == 0.0, key


def chat(*blocks: dict) -> list[dict]:
    return [{"role": "user", "content": list(blocks)}]


# -- image and video processors -------------------------------------------------------------
@pytest.mark.parametrize("limits", [LIMITS, {}, {"min_pixels": 28 * 28 * 40, "max_pixels": 28 * 28 * 60}])
def test_image_processor_matches_transformers(limits):
    images = [photo("chelsea"), np.array(photo("coffee", (50, 100))), photo("camera"),
              np.random.default_rng(0).random((3, 40, 70)).astype(np.float32)]
    expected = transformers.Qwen2VLImageProcessor(**limits)(images, return_tensors="pt")
    got = Qwen2VLImageProcessor(**limits)(images, return_tensors="pt")
    assert_same(expected, got, ("pixel_values", "image_grid_thw"))


def test_video_processor_matches_transformers():
    clips = [video(5), video(4, 100, 50)]
    settings = {**LIMITS, "cap_pixels_per_frame": False}
    expected = transformers.Qwen2VLVideoProcessor(**settings)(clips, return_tensors="pt")
    got = Qwen2VLVideoProcessor(**settings)(clips, return_tensors="pt")
    assert_same(expected, got, ("pixel_values_videos", "video_grid_thw"))
    # frame sampling, and the whole-video pixel cap of the reference implementation
    for extra in ({"do_sample_frames": True, "num_frames": 4}, {"cap_pixels_per_frame": True, "max_video_tokens": 10}):
        expected = transformers.Qwen2VLVideoProcessor(**{**settings, **extra})(clips[0], return_tensors="pt")
        got = Qwen2VLVideoProcessor(**{**settings, **extra})(clips[0], return_tensors="pt")
        assert_same(expected, got, ("pixel_values_videos", "video_grid_thw"))


def test_video_frames_as_a_list_of_images_equal_the_array():
    clip = video(4)
    processor = Qwen2VLVideoProcessor(**LIMITS)
    from PIL import Image

    as_frames = processor([Image.fromarray(frame) for frame in clip], return_tensors="pt")
    assert_same(processor(clip, return_tensors="pt"), as_frames, ("pixel_values_videos", "video_grid_thw"))


def test_processor_settings_files_match_transformers(tmp_path):
    transformers.Qwen2VLImageProcessor(**LIMITS).save_pretrained(tmp_path / "image")
    transformers.Qwen2VLVideoProcessor(**LIMITS).save_pretrained(tmp_path / "video")
    assert json.loads((tmp_path / "image" / "preprocessor_config.json").read_text()) == Qwen2VLImageProcessor(**LIMITS).to_dict()
    assert json.loads((tmp_path / "video" / "video_preprocessor_config.json").read_text()) == Qwen2VLVideoProcessor(**LIMITS).to_dict()
    # the published checkpoints' legacy keys: min_pixels / max_pixels instead of size
    legacy = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
              "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "preprocessor_config.json").write_text(json.dumps(legacy))
    image = Qwen2VLImageProcessor.from_pretrained(tmp_path / "legacy")
    video_processor = Qwen2VLVideoProcessor.from_pretrained(tmp_path / "legacy")  # falls back to the image settings
    assert image.size == {"shortest_edge": 3136, "longest_edge": 12845056} == video_processor.size
    assert auto.AutoImageProcessor.from_pretrained(tmp_path / "legacy").size == image.size


def test_processor_saves_what_transformers_saves_and_loads_it(processors, reference_checkpoint, tmp_path):
    reference, ours = processors
    reference.save_pretrained(tmp_path / "transformers")
    ours.save_pretrained(tmp_path / "bestiary")
    expected = json.loads((tmp_path / "transformers" / "processor_config.json").read_text())
    assert json.loads((tmp_path / "bestiary" / "processor_config.json").read_text()) == expected
    assert (tmp_path / "bestiary" / "chat_template.jinja").read_text() == (tmp_path / "transformers" / "chat_template.jinja").read_text()
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path / "bestiary")
    assert type(reloaded).__name__ == "Qwen2VLProcessor"
    loaded = Qwen2VLProcessor.from_pretrained(tmp_path / "transformers")
    assert loaded.to_dict() == ours.to_dict() and loaded.chat_template == ours.chat_template
    assert isinstance(auto.AutoProcessor.from_pretrained(reference_checkpoint), Qwen2VLProcessor)
    smaller = auto.AutoProcessor.from_pretrained(reference_checkpoint, max_pixels=28 * 28 * 8, padding_side="right")
    assert smaller.image_processor.max_pixels == smaller.video_processor.max_pixels == 28 * 28 * 8
    assert smaller.tokenizer.padding_side == "right"


# -- the multimodal processor ---------------------------------------------------------------
def test_chat_with_images_and_a_video_matches_transformers(processors):
    reference, ours = processors
    conversation = chat(
        {"type": "image", "image": photo("chelsea")},
        {"type": "text", "text": "Describe this image."},
        {"type": "image", "image": np.array(photo("astronaut", (120, 90)))},
        {"type": "video", "video": video(4)},
        {"type": "text", "text": "Compare them."},
    )
    assert reference.apply_chat_template(conversation, add_generation_prompt=True) == ours.apply_chat_template(
        conversation, add_generation_prompt=True
    )
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    expected = reference.apply_chat_template(conversation, **kwargs)
    got = ours.apply_chat_template(conversation, **kwargs)
    assert list(expected) == list(got)
    assert_same(expected, got, list(expected))


def test_padded_batch_and_plain_call_match_transformers(processors):
    reference, ours = processors
    prompts = ["<|vision_start|><|image_pad|><|vision_end|>What is this?", "Two: <|vision_start|><|image_pad|><|vision_end|>"]
    images = [photo("chelsea"), photo("coffee", (90, 200))]
    expected = reference(images=images, text=prompts, padding=True, return_tensors="pt")
    got = ours(images=images, text=prompts, padding=True, return_tensors="pt")
    assert_same(expected, got, list(expected))
    # each placeholder is expanded to exactly its image's token count
    counts = (got["image_grid_thw"].prod(-1) // 4).tolist()
    assert (got["input_ids"] == ours.image_token_id).sum(-1).tolist() == counts


def test_placeholder_count_that_does_not_match_the_images_is_a_clear_error(processors):
    _, ours = processors
    with pytest.raises(ProcessingError, match=r"holds 2 image placeholders .* but 1 image was given"):
        ours(text=["<|image_pad|> and <|image_pad|>"], images=[photo("chelsea")])
    with pytest.raises(ProcessingError, match=r"holds 0 video placeholders .* but 1 video was given"):
        ours(text=["no placeholder"], videos=[video(2)])


def test_image_smaller_than_a_patch_is_a_clear_error(processors):
    _, ours = processors
    tiny = np.zeros((10, 40, 3), dtype=np.uint8)
    with pytest.raises(ProcessingError, match=r"Image 1 is 10x40 pixels, smaller than one 14x14 patch"):
        ours.image_processor([photo("chelsea"), tiny])
    with pytest.raises(ProcessingError, match="smaller than one"):
        ours.video_processor(np.zeros((2, 8, 8, 3), dtype=np.uint8))


def test_truncation_that_would_cut_vision_tokens_is_refused(processors):
    reference, ours = processors
    conversation = chat({"type": "text", "text": "Look:"}, {"type": "image", "image": photo("chelsea")},
                        {"type": "text", "text": "Describe this image in one sentence."})
    full = ours.apply_chat_template(conversation, tokenize=True)[0]
    image_start = full.index(ours.image_token_id)
    with pytest.raises(ProcessingError, match=r"would cut image 1, whose \d+ vision tokens sit at positions"):
        ours.apply_chat_template(conversation, tokenize=True, processor_kwargs={"truncation": True, "max_length": image_start + 3})
    # cutting only text after the image is allowed, and gives what transformers gives
    image_end = len(full) - full[::-1].index(ours.image_token_id)
    limit = image_end + 2
    kwargs = dict(tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"truncation": True, "max_length": limit})
    got = ours.apply_chat_template(conversation, **kwargs)
    expected = reference.apply_chat_template(conversation, **kwargs)
    assert got["input_ids"].shape[1] == limit
    assert_same(expected, got, ["input_ids", "pixel_values", "image_grid_thw"])


def test_video_files_and_bad_inputs_are_clear_errors(processors):
    _, ours = processors
    with pytest.raises(ProcessingError, match="not decoded"):
        ours.video_processor("clip.mp4")
    with pytest.raises(ProcessingError, match="cannot place"):
        ours(text=["hi"], not_a_setting=1)
    with pytest.raises(ProcessingError, match="no image"):
        ours.apply_chat_template(chat({"type": "image"}, {"type": "text", "text": "?"}), tokenize=True)
