"""generate() drives an encoder-decoder model (the path Whisper will use): encoder once, EncoderDecoderCache, beams.

A toy seq2seq model defined here (embedding encoder; one decoder block with
self-attention through the cache contract and cross-attention through
``EncoderDecoderCache.cross_attention``) is decoded with the cache and
compared with a plain loop that recomputes everything without a cache.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from bestiary.config import Config
from bestiary.generation.cache import EncoderDecoderCache
from bestiary.generation.mixin import GenerationMixin
from bestiary.modeling import PreTrainedModel
from bestiary.nn.attention import attend, build_attention_mask, padding_mask_to_additive, AttentionMask
from bestiary.outputs import BaseModelOutput, Seq2SeqLMOutput
from tests.core.test_generation_models import one_thread  # noqa: F401


class ToySeq2SeqConfig(Config):
    model_type: ClassVar[str] = "toy-seq2seq"
    vocab_size: int = 41
    hidden_size: int = 16
    is_encoder_decoder: bool = True
    decoder_start_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0


class ToyEncoder(nn.Module):
    main_input_name = "input_ids"

    def __init__(self, config: ToySeq2SeqConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=torch.tanh(self.mix(self.embed(input_ids))))


class ToySeq2Seq(PreTrainedModel, GenerationMixin):
    config_class = ToySeq2SeqConfig

    def __init__(self, config: ToySeq2SeqConfig) -> None:
        super().__init__(config)
        size = config.hidden_size
        self.encoder = ToyEncoder(config)
        self.embed = nn.Embedding(config.vocab_size, size)
        self.positions = nn.Embedding(64, size)
        self.q, self.k, self.v = nn.Linear(size, size), nn.Linear(size, size), nn.Linear(size, size)
        self.cq, self.ck, self.cv = nn.Linear(size, size), nn.Linear(size, size), nn.Linear(size, size)
        self.lm_head = nn.Linear(size, config.vocab_size)
        self.post_init()

    def get_encoder(self):
        return self.encoder

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, past_key_values=None, cache_position=None, use_cache=None, **kwargs,
    ):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        memory = encoder_outputs.last_hidden_state
        cache = past_key_values
        start = cache.get_seq_length() if cache is not None else 0
        if cache_position is None:
            cache_position = torch.arange(start, start + decoder_input_ids.shape[1])
        x = self.embed(decoder_input_ids) + self.positions(cache_position)[None]
        heads = lambda t: t.view(t.shape[0], t.shape[1], 2, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        key_positions = cache_position
        if cache is not None:
            key_positions = cache.key_positions(0, cache_position)
            k, v = cache.update(k, v, 0)
        mask = build_attention_mask(decoder_attention_mask, cache_position, key_positions, x.dtype)
        attended, _ = attend(q, k, v, mask, scaling=0.35)
        compute = lambda: (heads(self.ck(memory)), heads(self.cv(memory)))  # noqa: E731
        ck, cv = cache.cross_attention(0, compute) if isinstance(cache, EncoderDecoderCache) else compute()
        cross_mask = padding_mask_to_additive(attention_mask, x.dtype) if attention_mask is not None else None
        crossed, _ = attend(heads(self.cq(x)), ck, cv, AttentionMask(cross_mask, False), scaling=0.35)
        hidden = x + attended.flatten(2) + crossed.flatten(2)
        return Seq2SeqLMOutput(logits=self.lm_head(hidden), past_key_values=cache)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToySeq2Seq(ToySeq2SeqConfig()).eval()


def reference_greedy(model, input_ids, attention_mask, steps):
    decoded = torch.full((input_ids.shape[0], 1), 1)
    for _ in range(steps):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoded).logits
        decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded


def encoder_batch():
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    return ids, (ids != 0).long()


def test_greedy_with_the_encoder_decoder_cache_matches_a_plain_loop(model):
    ids, mask = encoder_batch()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference_greedy(model, ids, mask, 8))
    assert isinstance(out.past_key_values, EncoderDecoderCache)
    assert out.past_key_values.get_seq_length() == 8


def test_beam_search_and_no_cache_agree(model):
    ids, mask = encoder_batch()
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2, eos_token_id=None)
    uncached = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2, eos_token_id=None, use_cache=False
    )
    assert torch.equal(cached, uncached) and cached.shape == (4, 7)


def test_precomputed_encoder_outputs_and_decoder_prompt(model):
    ids, mask = encoder_batch()
    encoded = model.get_encoder()(ids)
    prompt = torch.tensor([[1, 7], [1, 8]])
    out = model.generate(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=4, eos_token_id=None)
    expected = model.generate(ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=4, eos_token_id=None)
    assert torch.equal(out, expected) and torch.equal(out[:, :2], prompt)
