"""Qwen2-VL: bestiary against transformers 5.24.0 on a tiny random checkpoint, both directions (fp32, 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_qwen2_vl")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ConfigError, ProcessingError  # noqa: E402
from bestiary.generation.cache import DynamicCache  # noqa: E402
from bestiary_qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig  # noqa: E402
from bestiary_qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration, Qwen2VLModel  # noqa: E402

from tests.plugins.qwen2_vl.qwen2_vl_builders import photo, video  # noqa: E402

TOLERANCE = 1e-4


def assert_close(reference: torch.Tensor, ours: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    assert reference.shape == ours.shape
    if mask is not None:
        reference, ours = reference[mask.bool()], ours[mask.bool()]
    assert (reference - ours).abs().max().item() <= TOLERANCE


def chat(*blocks: dict) -> list[dict]:
    return [{"role": "user", "content": list(blocks)}]


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(value) -> dict:
    return {"type": "image", "image": value}


def encode(processors, conversations, **kwargs):
    """The same inputs for both models: transformers' processor output (mm_token_type_ids included)."""
    reference_processor, _ = processors
    return reference_processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs
    )


def logits_of(model, inputs, **extra):
    with torch.no_grad():
        return model(**inputs, **extra).logits


# -- the vision tower ------------------------------------------------------------------
def test_vision_features_match(models, processors):
    reference, ours = models
    pixels = processors[1].image_processor([photo("chelsea"), photo("coffee", (90, 60))], return_tensors="pt")
    with torch.no_grad():
        expected = reference.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
        got = ours.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
    assert_close(expected.last_hidden_state, got.last_hidden_state)
    assert_close(expected.pooler_output, got.pooler_output)
    with torch.no_grad():
        split_expected = reference.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
        split_got = ours.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
    assert [t.shape for t in split_expected.pooler_output] == [t.shape for t in split_got.pooler_output]


def test_video_features_match(models, processors):
    reference, ours = models
    clips = processors[1].video_processor([video(5), video(4, 100, 50)], return_tensors="pt")
    with torch.no_grad():
        expected = reference.model.get_video_features(clips["pixel_values_videos"], clips["video_grid_thw"])
        got = ours.get_video_features(clips["pixel_values_videos"], clips["video_grid_thw"])
    for a, b in zip(expected.pooler_output, got.pooler_output):
        assert_close(a, b)


# -- logits -------------------------------------------------------------------------------
def test_text_only_logits_match_with_left_padding(models, processors):
    reference, ours = models
    inputs = encode(processors, [chat(text("Hello there, how are you?")), chat(text("Hi"))], processor_kwargs={"padding": True})
    inputs.pop("mm_token_type_ids")
    assert_close(logits_of(reference, inputs), logits_of(ours, inputs), inputs["attention_mask"])


def test_one_image_logits_match(models, processors):
    reference, ours = models
    inputs = encode(processors, chat(image(photo("chelsea")), text("Describe this image.")))
    expected = logits_of(reference, inputs)
    assert_close(expected, logits_of(ours, inputs))
    # mm_token_type_ids is accepted but never needed
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    assert_close(expected, logits_of(ours, without))


def test_transformers_demands_mm_token_type_ids_and_we_do_not(models, processors):
    reference, ours = models
    inputs = encode(processors, chat(image(photo("chelsea")), text("Describe this image.")))
    inputs.pop("mm_token_type_ids")
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        logits_of(reference, inputs)
    assert logits_of(ours, inputs).shape[1] == inputs["input_ids"].shape[1]


def test_several_images_of_different_sizes_in_a_padded_batch(models, processors):
    reference, ours = models
    conversations = [
        chat(image(photo("chelsea")), text("Compare"), image(photo("camera", (60, 120))), text("Which is brighter?")),
        chat(image(photo("coffee", (200, 100))), text("What is in the picture?")),
    ]
    inputs = encode(processors, conversations, processor_kwargs={"padding": True})
    assert inputs["image_grid_thw"].shape[0] == 3 and len({tuple(g) for g in inputs["image_grid_thw"].tolist()}) == 3
    assert_close(logits_of(reference, inputs), logits_of(ours, inputs), inputs["attention_mask"])


def test_video_and_image_logits_match(models, processors):
    reference, ours = models
    conversation = chat(
        {"type": "video", "video": video(6)}, text("What happens?"), image(photo("coffee", (90, 60))), text("And here?")
    )
    inputs = encode(processors, conversation)
    assert "pixel_values_videos" in inputs
    assert_close(logits_of(reference, inputs), logits_of(ours, inputs))


# -- positions ------------------------------------------------------------------------------
def test_rope_index_matches(models, processors):
    reference, ours = models
    conversations = [
        chat(image(photo("chelsea")), text("Compare"), {"type": "video", "video": video(4)}, text("and")),
        chat(image(photo("coffee", (200, 100))), text("Describe")),
    ]
    inputs = encode(processors, conversations, processor_kwargs={"padding": True})
    kwargs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "attention_mask")}
    expected, expected_deltas = reference.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], **kwargs
    )
    got, got_deltas = ours.model.get_rope_index(inputs["input_ids"], **kwargs)
    assert torch.equal(expected, got)
    assert torch.equal(expected_deltas, got_deltas)


def test_text_after_a_long_video_continues_after_its_last_frame(models, processors):
    """Documented difference: transformers 5.24 skips the temporal extent; the original Qwen2-VL code does not."""
    reference, ours = models
    clip = video(12, 56, 56)  # 6 temporal patches, a 2x2 merged grid
    inputs = processors[1](text=["<|vision_start|><|video_pad|><|vision_end|>after"], videos=[clip], return_tensors="pt")
    grid = inputs["video_grid_thw"][0].tolist()
    assert grid[0] > max(grid[1], grid[2]) // 2
    positions, _ = ours.model.get_rope_index(inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"])
    tokens = grid[0] * grid[1] * grid[2] // 4
    vision = positions[:, 0, 1 : 1 + tokens]
    assert positions[0, 0, 1 + tokens].item() == vision.max().item() + 1  # <|vision_end|>, right after the video
    expected, _ = reference.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"]
    )
    assert torch.equal(expected[:, :, : 1 + tokens], positions[:, :, : 1 + tokens])  # the video itself agrees


def test_incremental_decoding_with_a_cache_matches_a_full_forward(models, processors):
    _, ours = models
    inputs = encode(processors, chat(image(photo("chelsea")), text("Describe this image.")))
    inputs.pop("mm_token_type_ids")
    extra = torch.tensor([[17, 42]])
    full_ids = torch.cat([inputs["input_ids"], extra], dim=1)
    with torch.no_grad():
        full = ours(**{**inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}).logits
        cache = DynamicCache()
        first = ours(**inputs, past_key_values=cache, use_cache=True)
        step = ours(input_ids=extra, past_key_values=first.past_key_values, use_cache=True)  # offsets read from the cache
        explicit = ours(input_ids=extra, past_key_values=DynamicCache(), use_cache=True, rope_deltas=first.rope_deltas)
    assert_close(full[:, -2:], step.logits)
    assert first.rope_deltas is not None and explicit.logits.shape == step.logits.shape


# -- placeholder errors --------------------------------------------------------------------
def test_placeholder_count_mismatch_is_a_clear_error(models, processors):
    _, ours = models
    inputs = encode(processors, chat(image(photo("chelsea")), text("Describe")))
    ids = inputs["input_ids"]
    image_id = ours.config.image_token_id
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[(ids[0] == image_id).nonzero()[0, 0]] = False  # one placeholder fewer than the image's tokens
    with pytest.raises(ProcessingError, match=r"placeholder tokens .* vision tokens"):
        ours(input_ids=ids[:, keep], pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    with pytest.raises(ProcessingError, match="image"):
        ours.model.get_rope_index(ids, image_grid_thw=torch.cat([inputs["image_grid_thw"]] * 2))


# -- loading and saving ----------------------------------------------------------------------
def test_bestiary_saved_checkpoint_loads_in_transformers(models, processors, tmp_path):
    reference, ours = models
    ours.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        ours_keys = set(handle.keys())
    reference.save_pretrained(tmp_path / "reference")
    with safe_open(tmp_path / "reference" / "model.safetensors", "pt") as handle:
        assert ours_keys == set(handle.keys())
    config = json.loads((tmp_path / "config.json").read_text())
    expected_config = json.loads((tmp_path / "reference" / "config.json").read_text())
    assert config == expected_config
    reloaded = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = encode(processors, chat(image(photo("chelsea")), text("Describe this image.")))
    assert_close(logits_of(reference, inputs), logits_of(reloaded, inputs))


def test_base_model_round_trips_both_ways(models, processors, tmp_path):
    reference, _ = models
    reference.model.save_pretrained(tmp_path / "transformers")
    ours = auto.AutoModel.from_pretrained(tmp_path / "transformers")
    assert isinstance(ours, Qwen2VLModel)
    inputs = encode(processors, chat(image(photo("coffee", (90, 60))), text("Describe")))
    with torch.no_grad():
        expected = reference.model(**inputs).last_hidden_state
        assert_close(expected, ours(**inputs).last_hidden_state)
    ours.save_pretrained(tmp_path / "bestiary")
    reloaded = transformers.Qwen2VLModel.from_pretrained(tmp_path / "bestiary").eval()
    with torch.no_grad():
        assert_close(expected, reloaded(**inputs).last_hidden_state)


def test_auto_classes_and_transformers5_key_names(models, reference_checkpoint, tmp_path):
    _, ours = models
    assert isinstance(auto.AutoModelForImageTextToText.from_pretrained(reference_checkpoint), Qwen2VLForConditionalGeneration)
    assert isinstance(auto.AutoModelForVision2Seq.from_pretrained(reference_checkpoint), Qwen2VLForConditionalGeneration)
    # a checkpoint saved with the in-memory names of transformers 5 (model.language_model.*, model.visual.*)
    from bestiary.safetensors_io import save_file

    ours.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, tmp_path / "model.safetensors")
    _, report = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys


def test_config_reads_and_writes_transformers_layout(reference_checkpoint, tmp_path):
    config = Qwen2VLConfig.from_pretrained(reference_checkpoint)
    on_disk = json.loads((reference_checkpoint / "config.json").read_text())
    assert config.to_dict() == on_disk
    # the flat layout of the published checkpoints: decoder settings at the top level, rope_scaling "mrope"
    flat = {k: v for k, v in on_disk.items() if k != "text_config"}
    text_settings = dict(on_disk["text_config"])
    sections = text_settings.pop("rope_parameters")["mrope_section"]
    flat.update(text_settings, rope_scaling={"type": "mrope", "mrope_section": sections}, rope_theta=10000.0)
    flat["tie_word_embeddings"] = True
    ours = Qwen2VLConfig.from_dict(flat)
    theirs = transformers.Qwen2VLConfig(**flat)
    assert ours.text_config.mrope_section == theirs.text_config.rope_parameters["mrope_section"]
    assert ours.tie_word_embeddings and theirs.tie_word_embeddings
    assert ours.text_config.rope_parameters["rope_type"] == "default"
    assert ours.text_config.hidden_size == theirs.text_config.hidden_size


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="mrope_section"):
        Qwen2VLConfig(text_config={"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "rope_parameters": {"mrope_section": [4, 4, 4]}})
    with pytest.raises(ConfigError, match="vision_config.hidden_size"):
        Qwen2VLForConditionalGeneration(Qwen2VLConfig(
            text_config={"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500,
                         "intermediate_size": 8, "num_hidden_layers": 1,
                         "rope_parameters": {"mrope_section": [2, 1, 1]}},
            vision_config={"hidden_size": 64, "embed_dim": 16, "num_heads": 2, "depth": 1},
            image_token_id=1, video_token_id=2,
        ))


def test_back_to_back_images_are_split_by_their_grids(models, processors):
    _, ours = models
    images = [photo("chelsea"), photo("coffee", (60, 120))]
    inputs = processors[1](images=images, text=["A<|image_pad|><|image_pad|>B"], return_tensors="pt")
    positions, _ = ours.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"])
    first, second = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    first_block = positions[:, 0, 1 : 1 + first]
    second_block = positions[:, 0, 1 + first : 1 + first + second]
    assert second_block.min().item() == first_block.max().item() + 1  # the second image starts after the first
    separate = processors[1](images=images[1:], text=["<|image_pad|>"], return_tensors="pt")
    alone, _ = ours.model.get_rope_index(separate["input_ids"], image_grid_thw=separate["image_grid_thw"])
    assert torch.equal(second_block - second_block.min(), alone[:, 0] - alone.min())
    assert ours(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_plugin_passes_the_conformance_kit(tmp_path):
    from bestiary.testing import check_plugin

    tiny = {
        "text_config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                        "num_attention_heads": 4, "num_key_value_heads": 2,
                        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1]}},
        "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2},
        "image_token_id": 60, "video_token_id": 61, "vision_start_token_id": 62, "vision_end_token_id": 63,
    }
    check_plugin("bestiary-qwen2-vl", tmp_path, tiny_configs={"qwen2_vl": tiny})
