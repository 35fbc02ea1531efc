"""Streaming: TextStreamer, TextIteratorStreamer (from a thread), generate_stream (batches) and its async form."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
import torch

from bestiary.errors import GenerationError
from bestiary.generation.streamers import AsyncTextIteratorStreamer, IncrementalDecoder, TextIteratorStreamer, TextStreamer
from tests.core.test_generation_models import chat_tokenizer, left_padded, one_thread, tiny_llama  # noqa: F401


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return chat_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=640)


def encode(tokenizer, text):
    return tokenizer(text, return_tensors="pt")["input_ids"]


def test_text_streamer_prints_the_generated_text(tokenizer, model):
    ids = encode(tokenizer, "Hello world")
    sink = io.StringIO()
    out = model.generate(ids, max_new_tokens=12, eos_token_id=None, streamer=TextStreamer(tokenizer, skip_prompt=True, stream=sink))
    assert sink.getvalue() == tokenizer.decode(out[0, ids.shape[1] :].tolist()) + "\n"
    sink = io.StringIO()
    model.generate(ids, max_new_tokens=5, eos_token_id=None, streamer=TextStreamer(tokenizer, stream=sink, skip_special_tokens=True))
    assert sink.getvalue().startswith("Hello world")


def test_text_streamer_refuses_batches(tokenizer, model):
    ids = encode(tokenizer, "Hello world").repeat(2, 1)
    with pytest.raises(GenerationError, match="generate_stream"):
        model.generate(ids, max_new_tokens=3, streamer=TextStreamer(tokenizer, stream=io.StringIO()))


def test_iterator_streamer_from_a_thread(tokenizer, model):
    ids = encode(tokenizer, "The quick brown fox")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    result = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("out", model.generate(ids, max_new_tokens=15, eos_token_id=None, streamer=streamer))
    )
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert "".join(pieces) == tokenizer.decode(result["out"][0, ids.shape[1] :].tolist())
    assert len(pieces) > 1


def test_incremental_decoder_holds_incomplete_characters(tokenizer):
    ids = tokenizer("héllo wörld ok", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push([token]) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == "héllo wörld ok"
    assert all("\ufffd" not in piece for piece in pieces)


def test_generate_stream_yields_each_step_for_a_batch(tokenizer, model):
    rows = [encode(tokenizer, "Hello world")[0], encode(tokenizer, "The quick brown fox jumps")[0]]
    ids, mask = left_padded(rows, pad=tokenizer.pad_token_id)
    settings = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    expected = model.generate(ids, **settings)
    steps = list(model.generate_stream(ids, tokenizer=tokenizer, **settings))
    assert len(steps) == 10
    tokens = torch.cat([step.tokens for step in steps], dim=1)
    assert torch.equal(tokens, expected[:, ids.shape[1] :])
    assert steps[-1].finished.all() and not steps[0].finished.any()
    for row in range(2):
        text = "".join(step.text[row] for step in steps)
        assert text == tokenizer.decode(expected[row, ids.shape[1] :].tolist(), skip_special_tokens=True)


def test_generate_stream_marks_rows_that_finish_early(model):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    free = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    stop = int(free[0, 4])
    steps = list(model.generate_stream(ids, max_new_tokens=6, eos_token_id=stop, pad_token_id=0))
    first_done = next(i for i, step in enumerate(steps) if step.finished[0])
    assert steps[first_done].tokens[0, 0] == stop
    assert all(step.tokens[0, 0] == 0 for step in steps[first_done + 1 :])


def test_async_generate_stream_and_async_streamer(tokenizer, model):
    ids = encode(tokenizer, "Hello world")

    async def collect():
        tokens = [step.tokens async for step in model.agenerate_stream(ids, max_new_tokens=6, eos_token_id=None)]
        streamer = AsyncTextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
        task = asyncio.create_task(asyncio.to_thread(model.generate, ids, max_new_tokens=6, eos_token_id=None, streamer=streamer))
        text = "".join([piece async for piece in streamer])
        await task
        return torch.cat(tokens, dim=1), text

    tokens, text = asyncio.run(collect())
    expected = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(tokens, expected[:, ids.shape[1] :])
    assert text == tokenizer.decode(expected[0, ids.shape[1] :].tolist())


def test_beam_search_cannot_stream(model):
    with pytest.raises(GenerationError, match="num_beams=1"):
        list(model.generate_stream(torch.tensor([[5, 6]]), max_new_tokens=3, num_beams=2))
