"""Greedy decoding and multinomial sampling, and what every one-hypothesis-per-row strategy shares.

Strategies are generator functions: each step yields a
:class:`~bestiary.generation.outputs.GenerationStep` (which is how
``generate_stream`` streams without threads) and the function returns the
final output. ``generate()`` simply runs the generator to its end.
"""

from __future__ import annotations

from typing import Any, Generator

import torch

from bestiary.generation.outputs import (
    GenerateDecoderOnlyOutput,
    GenerateEncoderDecoderOutput,
    GenerationStep,
)
from bestiary.generation.prepare import GenerationPlan

StrategyRun = Generator[GenerationStep, None, Any]


class Recorder:
    """Collects per-step scores, logits, attentions and hidden states when the user asked for them."""

    def __init__(self, plan: GenerationPlan) -> None:
        config = plan.config
        on = config.return_dict_in_generate
        self.scores: list[torch.Tensor] | None = [] if on and config.output_scores else None
        self.logits: list[torch.Tensor] | None = [] if on and config.output_logits else None
        self.attentions: list[Any] | None = [] if on and config.output_attentions else None
        self.hidden_states: list[Any] | None = [] if on and config.output_hidden_states else None
        self.cross_attentions: list[Any] | None = [] if on and config.output_attentions and plan.is_encoder_decoder else None

    @property
    def wants_model_extras(self) -> tuple[bool, bool]:
        """Whether the model must return (hidden states, attentions)."""
        return self.hidden_states is not None, self.attentions is not None

    def record(self, scores: torch.Tensor | None, logits: torch.Tensor | None, outputs: Any = None) -> None:
        if self.scores is not None and scores is not None:
            self.scores.append(scores)
        if self.logits is not None and logits is not None:
            self.logits.append(logits.clone())
        if outputs is not None:
            if self.attentions is not None:
                self.attentions.append(_first_of(outputs, "decoder_attentions", "attentions"))
            if self.hidden_states is not None:
                self.hidden_states.append(_first_of(outputs, "decoder_hidden_states", "hidden_states"))
            if self.cross_attentions is not None:
                self.cross_attentions.append(getattr(outputs, "cross_attentions", None))

    def truncate(self, steps: int) -> None:
        """Keep the records of the first ``steps`` steps."""
        for name in ("scores", "logits", "attentions", "hidden_states", "cross_attentions"):
            records = getattr(self, name)
            if records is not None:
                del records[steps:]


def _first_of(outputs: Any, *names: str) -> Any:
    for name in names:
        value = getattr(outputs, name, None)
        if value is not None:
            return value
    return None


def _as_tuple(records: list | None) -> tuple | None:
    return tuple(records) if records is not None else None


def finish_output(plan: GenerationPlan, sequences: torch.Tensor, recorder: Recorder) -> Any:
    """The return value of a one-hypothesis-per-row strategy: sequences, or the output dataclass."""
    if plan.placeholder_length:
        sequences = sequences[:, plan.placeholder_length :]
    if not plan.config.return_dict_in_generate:
        return sequences
    cache = plan.runner.cache
    if plan.is_encoder_decoder:
        encoder = plan.runner.model_kwargs.get("encoder_outputs")
        return GenerateEncoderDecoderOutput(
            sequences=sequences,
            scores=_as_tuple(recorder.scores),
            logits=_as_tuple(recorder.logits),
            encoder_attentions=getattr(encoder, "attentions", None),
            encoder_hidden_states=getattr(encoder, "hidden_states", None),
            decoder_attentions=_as_tuple(recorder.attentions),
            cross_attentions=_as_tuple(recorder.cross_attentions),
            decoder_hidden_states=_as_tuple(recorder.hidden_states),
            past_key_values=cache,
        )
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=_as_tuple(recorder.scores),
        logits=_as_tuple(recorder.logits),
        attentions=_as_tuple(recorder.attentions),
        hidden_states=_as_tuple(recorder.hidden_states),
        past_key_values=cache,
    )


def select_tokens(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """The next token of each row: the argmax, or a draw from softmax(scores)."""
    if do_sample:
        return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
    return scores.argmax(dim=-1)


def greedy_or_sample(plan: GenerationPlan) -> StrategyRun:
    """Greedy decoding (``do_sample=False``) or multinomial sampling (``do_sample=True``)."""
    runner = plan.runner
    processors, criteria = plan.processors, plan.criteria
    do_sample = plan.config.do_sample
    recorder = Recorder(plan)
    want_hidden, want_attentions = recorder.wants_model_extras
    unfinished = torch.ones(runner.rows, dtype=torch.bool, device=plan.device)
    pad = torch.tensor(plan.pad_token_id if plan.pad_token_id is not None else 0, device=plan.device)
    masks_finished = plan.eos is not None
    while True:
        outputs = runner.step(output_hidden_states=want_hidden, output_attentions=want_attentions)
        logits = outputs.logits[:, -1, :].float()
        scores = processors(runner.input_ids, logits) if processors else logits
        recorder.record(scores, logits, outputs)
        next_tokens = select_tokens(scores, do_sample)
        if masks_finished:
            next_tokens = torch.where(unfinished, next_tokens, pad)
        next_tokens = next_tokens[:, None]
        runner.append(next_tokens)
        unfinished = unfinished & ~criteria(runner.input_ids, scores)
        yield GenerationStep(tokens=next_tokens, finished=~unfinished)
        if not bool(unfinished.any()):
            break
    return finish_output(plan, runner.input_ids, recorder)


__all__ = ["Recorder", "StrategyRun", "finish_output", "greedy_or_sample", "select_tokens"]
