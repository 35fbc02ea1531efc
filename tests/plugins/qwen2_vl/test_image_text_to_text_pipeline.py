"""The image-text-to-text pipeline on the tiny Qwen2-VL: input forms, output forms, and agreement with generate()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("bestiary_qwen2_vl")

from bestiary.errors import ProcessingError  # noqa: E402
from bestiary.pipelines import pipeline  # noqa: E402

from tests.plugins.qwen2_vl.qwen2_vl_builders import photo  # noqa: E402


@pytest.fixture(scope="module")
def pipe(reference_checkpoint):
    return pipeline("image-text-to-text", str(reference_checkpoint))


def chat(image, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_chat_with_a_pil_image_answers_like_generate(pipe):
    messages = chat(photo("chelsea"), "Describe this image.")
    result = pipe(text=messages, max_new_tokens=6)
    assert isinstance(result, list) and len(result) == 1
    record = result[0]
    assert record["input_text"] == messages
    assert record["generated_text"][:-1] == messages and record["generated_text"][-1]["role"] == "assistant"
    inputs = pipe.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                return_tensors="pt")
    with torch.no_grad():
        ids = pipe.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = pipe.processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert record["generated_text"][-1]["content"] == expected


def test_images_as_arrays_and_paths_in_a_batch_match_single_runs(pipe, tmp_path):
    path = tmp_path / "coffee.png"
    photo("coffee", (120, 80)).save(path)
    chats = [
        chat(np.asarray(photo("astronaut", (100, 100))), "What is in the picture?"),
        [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "Hi"}]}],
    ]
    batched = pipe(chats, max_new_tokens=5, return_full_text=False)
    single = [pipe(c, max_new_tokens=5, return_full_text=False) for c in chats]
    assert [b[0]["generated_text"] for b in batched] == [s[0]["generated_text"] for s in single]
    assert isinstance(batched[0][0]["generated_text"], str)


def test_image_and_prompt_pairs_and_token_outputs(pipe):
    prompt = "<|vision_start|><|image_pad|><|vision_end|>Describe"
    result = pipe(images=photo("chelsea"), text=prompt, max_new_tokens=3)
    assert result[0]["generated_text"].startswith(prompt)
    tokens = pipe({"images": photo("chelsea"), "text": prompt}, max_new_tokens=3, return_tensors=True)
    assert len(tokens[0]["generated_token_ids"]) == 3
    several = pipe(text=chat(photo("chelsea"), "?"), max_new_tokens=3, num_return_sequences=2, num_beams=2)
    assert len(several) == 2


def test_bad_inputs_are_clear_errors(pipe):
    with pytest.raises(ProcessingError, match="inside the chat messages"):
        pipe(images=photo("chelsea"), text=chat(photo("chelsea"), "?"))
    with pytest.raises(ProcessingError, match="placeholder"):
        pipe(images=photo("chelsea"), text="no placeholder here", max_new_tokens=2)
