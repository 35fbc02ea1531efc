"""Qwen2-VL generation through the core engine: token-for-token parity with transformers, and no state between calls."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_qwen2_vl")

from tests.plugins.qwen2_vl.qwen2_vl_builders import photo, video  # noqa: E402


def chat(*blocks: dict) -> list[dict]:
    return [{"role": "user", "content": list(blocks)}]


def encode(processors, conversations, **kwargs):
    """transformers' processor output (with mm_token_type_ids, which transformers' generate needs)."""
    return processors[0].apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs
    )


def generate(model, inputs, **settings):
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, **settings)


CAT = chat({"type": "image", "image": photo("chelsea")}, {"type": "text", "text": "Describe this image."})
COFFEE = chat({"type": "image", "image": photo("coffee", (160, 100))}, {"type": "text", "text": "What is in the picture?"})


def test_greedy_generation_with_an_image_matches_transformers(models, processors):
    reference, ours = models
    inputs = encode(processors, CAT)
    expected = generate(reference, inputs, max_new_tokens=12)
    got = generate(ours, inputs, max_new_tokens=12)
    assert torch.equal(expected, got)
    assert len(set(got[0, inputs["input_ids"].shape[1] :].tolist())) > 2  # not a degenerate repetition


def test_greedy_generation_of_a_padded_batch_with_images_and_a_video_matches_transformers(models, processors):
    reference, ours = models
    conversations = [
        CAT,
        chat({"type": "video", "video": video(4)}, {"type": "text", "text": "What happens?"}),
        chat({"type": "text", "text": "Hello"}),
    ]
    inputs = encode(processors, conversations, processor_kwargs={"padding": True})
    expected = generate(reference, inputs, max_new_tokens=8)
    assert torch.equal(expected, generate(ours, inputs, max_new_tokens=8))


def test_beam_search_and_several_sequences_with_images_match_transformers(models, processors):
    reference, ours = models
    inputs = encode(processors, [CAT, COFFEE], processor_kwargs={"padding": True})
    for settings in ({"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}):
        expected = generate(reference, inputs, max_new_tokens=6, **settings)
        assert torch.equal(expected, generate(ours, inputs, max_new_tokens=6, **settings)), settings


def test_calls_in_a_row_with_different_images_equal_fresh_runs(models, processors, reference_checkpoint):
    _, ours = models
    from bestiary_qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

    first, second = encode(processors, CAT), encode(processors, COFFEE)
    in_a_row = [generate(ours, first, max_new_tokens=8), generate(ours, second, max_new_tokens=8)]
    fresh = [
        generate(Qwen2VLForConditionalGeneration.from_pretrained(reference_checkpoint), inputs, max_new_tokens=8)
        for inputs in (first, second)
    ]
    assert all(torch.equal(a, b) for a, b in zip(in_a_row, fresh))
    # and a text-only call after an image call is not shifted by the image's offsets
    text_only = encode(processors, chat({"type": "text", "text": "Hello there"}))
    text_only.pop("mm_token_type_ids")
    fresh_text = generate(Qwen2VLForConditionalGeneration.from_pretrained(reference_checkpoint), text_only, max_new_tokens=6)
    assert torch.equal(generate(ours, text_only, max_new_tokens=6), fresh_text)


def test_generation_without_cache_chunked_and_streaming_agree(models, processors):
    _, ours = models
    inputs = encode(processors, CAT)
    inputs.pop("mm_token_type_ids")  # not needed by bestiary
    cached = generate(ours, inputs, max_new_tokens=6)
    assert torch.equal(cached, generate(ours, inputs, max_new_tokens=6, use_cache=False))
    assert torch.equal(cached, generate(ours, inputs, max_new_tokens=6, prefill_chunk_size=7))  # chunks split the image
    with torch.no_grad():
        steps = [step.tokens for step in ours.generate_stream(**inputs, max_new_tokens=6, do_sample=False)]
    assert torch.cat(steps, dim=1).tolist() == cached[:, inputs["input_ids"].shape[1] :].tolist()
