"""Outputs of ``generate()`` when ``return_dict_in_generate=True``, and streaming steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bestiary.outputs import ModelOutput

Tensor = Any


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """Greedy, sampling, contrastive, DoLa and assisted decoding of a decoder-only model.

    ``scores`` holds the processed next-token scores of each step and
    ``logits`` the raw ones (tuples of [batch, vocab]); ``past_key_values``
    is the cache, which can be passed back to ``generate()`` to continue.
    """

    sequences: Tensor = None
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None
    hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None

    @property
    def cache(self) -> Any:
        """The cache (transformers 5 calls it ``cache``)."""
        return self.past_key_values


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """Beam search of a decoder-only model.

    ``sequences_scores`` are the final length-normalised scores (with
    ``output_scores``); ``beam_indices`` [rows, generated] tells which beam
    each token of a returned sequence came from at each step (-1 after its end).
    """

    sequences: Tensor = None
    sequences_scores: Tensor | None = None
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    beam_indices: Tensor | None = None
    attentions: tuple[Any, ...] | None = None
    hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None

    @property
    def cache(self) -> Any:
        """The cache (transformers 5 calls it ``cache``)."""
        return self.past_key_values


@dataclass
class GenerateEncoderDecoderOutput(ModelOutput):
    """Non-beam decoding of an encoder-decoder model."""

    sequences: Tensor = None
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Any, ...] | None = None
    cross_attentions: tuple[Any, ...] | None = None
    decoder_hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None

    @property
    def cache(self) -> Any:
        return self.past_key_values


@dataclass
class GenerateBeamEncoderDecoderOutput(ModelOutput):
    """Beam search of an encoder-decoder model."""

    sequences: Tensor = None
    sequences_scores: Tensor | None = None
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    beam_indices: Tensor | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Any, ...] | None = None
    cross_attentions: tuple[Any, ...] | None = None
    decoder_hidden_states: tuple[Any, ...] | None = None
    past_key_values: Any = None

    @property
    def cache(self) -> Any:
        return self.past_key_values


@dataclass
class GenerationStep:
    """One step of :meth:`GenerationMixin.generate_stream`.

    ``tokens`` [batch, n] are the tokens added to each row in this step
    (n is 1 except with assisted decoding; rows that had already finished get
    padding); ``finished`` [batch] tells which rows are done after this step;
    ``text`` holds each row's newly printable text when a tokenizer was given.
    """

    tokens: Tensor
    finished: Tensor
    text: list[str] | None = None


__all__ = [
    "GenerateBeamDecoderOnlyOutput",
    "GenerateBeamEncoderDecoderOutput",
    "GenerateDecoderOnlyOutput",
    "GenerateEncoderDecoderOutput",
    "GenerationStep",
]
