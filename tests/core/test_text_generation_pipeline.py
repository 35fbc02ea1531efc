"""pipeline("text-generation"): chat messages equal apply_chat_template + generate; strings, batches, options."""

from __future__ import annotations

import pytest
import torch

from bestiary.pipelines import pipeline
from tests.core.test_generation_models import chat_tokenizer, one_thread, tiny_llama  # noqa: F401

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "Hello world!"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return chat_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=640, eos_token_id=None, pad_token_id=None)


def manual_chat(model, tokenizer, messages, **settings):
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], **settings)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :].tolist(), skip_special_tokens=True)


def test_chat_messages_equal_the_manual_chat_template_and_generate(model, tokenizer):
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator(CHAT, max_new_tokens=12)
    assert isinstance(result, list) and len(result) == 1
    messages = result[0]["generated_text"]
    assert messages[:2] == CHAT
    assert messages[2]["role"] == "assistant"
    assert messages[2]["content"] == manual_chat(model, tokenizer, CHAT, max_new_tokens=12)
    new_only = generator(CHAT, max_new_tokens=12, return_full_text=False)
    assert new_only[0]["generated_text"] == messages[2]["content"]


def test_a_batch_of_chats_matches_single_runs(model, tokenizer):
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    batched = generator([CHAT, OTHER], max_new_tokens=8, batch_size=2)
    singles = [generator(CHAT, max_new_tokens=8), generator(OTHER, max_new_tokens=8)]
    assert batched == singles


def test_strings_and_options(model, tokenizer):
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "The quick brown fox"
    full = generator(text, max_new_tokens=6)[0]["generated_text"]
    new = generator(text, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    assert full == text + new
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=6)[0, ids.shape[1] :].tolist()
    assert generator(text, max_new_tokens=6, return_tensors=True)[0]["generated_token_ids"][ids.shape[1] :] == expected
    torch.manual_seed(0)
    several = generator(text, max_new_tokens=6, do_sample=True, num_return_sequences=3)
    assert len(several) == 3 and all(r["generated_text"].startswith(text) for r in several)


def test_continue_final_assistant_message(model, tokenizer):
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prefill = CHAT + [{"role": "assistant", "content": "Paris"}]
    result = generator(prefill, max_new_tokens=5)[0]["generated_text"]
    assert len(result) == 3 and result[2]["content"].startswith("Paris")


def test_loading_from_a_folder(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    assert generator(CHAT, max_new_tokens=6) == pipeline("text-generation", model=model, tokenizer=tokenizer)(CHAT, max_new_tokens=6)
