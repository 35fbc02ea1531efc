"""Beam search, beam-search sampling and diverse (group) beam search, vectorised over the batch.

The bookkeeping follows transformers 5 so that results match it token for
token:

- Each step, every beam's next-token log-probabilities (after the logits
  processors) are added to the beam's running score. Among all
  ``beams x vocab`` continuations of a batch row, the best
  ``max(2, 1 + n_eos) * beams`` are kept (or drawn, when sampling).
- Continuations that hit a stopping criterion (an eos token, the length
  limit, ...) are candidates for the finished set if they rank among the
  first ``beams``; they are scored ``sum_logprobs / generated_length **
  length_penalty`` and kept when they beat the worst finished hypothesis.
  The ``beams`` best other continuations keep running; the cache is
  reordered to follow them.
- The search stops when no running beam can still beat the worst finished
  one (heuristics chosen by ``early_stopping``: True stops as soon as
  ``beams`` hypotheses finished; False compares with the current length;
  "never" with the best attainable length), or when every continuation hit
  a stopping criterion.

Diverse beam search (Vijayakumar et al., 2016) splits the beams into
``num_beam_groups`` groups searched one after another within each step;
a group's log-probabilities are lowered by ``diversity_penalty`` times the
number of times earlier groups picked each token at this step (Hamming
diversity). Each group keeps its own finished hypotheses; the returned
sequences are the best among all groups.
"""

from __future__ import annotations

from typing import Any

import torch

from bestiary.generation.decoding import Recorder, StrategyRun
from bestiary.generation.outputs import GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerationStep
from bestiary.generation.prepare import GenerationPlan

_NEG = -1.0e9


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick along dim 1 of ``tensor`` [B, N, ...] with ``index`` [B, M]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


class _GroupState:
    """Running and finished beams of one beam group, for every batch row."""

    def __init__(self, batch: int, size: int, max_length: int, prompt: torch.Tensor, fill: int, generated: int) -> None:
        device = prompt.device
        self.running = torch.full((batch, size, max_length), fill, dtype=torch.long, device=device)
        self.running[:, :, : prompt.shape[-1]] = prompt
        self.finished = self.running.clone()
        self.running_scores = torch.zeros(batch, size, dtype=torch.float, device=device)
        self.running_scores[:, 1:] = _NEG
        self.finished_scores = torch.full((batch, size), _NEG, dtype=torch.float, device=device)
        self.is_finished = torch.zeros(batch, size, dtype=torch.bool, device=device)
        self.improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
        self.hits = torch.zeros(batch, size, dtype=torch.bool, device=device)
        self.running_indices = torch.full((batch, size, generated), -1, dtype=torch.int32, device=device)
        self.finished_indices = self.running_indices.clone()


def beam_search(plan: GenerationPlan) -> StrategyRun:
    """Beam search (``num_beams > 1``), with sampling (``do_sample``) or beam groups (``num_beam_groups``)."""
    config, runner = plan.config, plan.runner
    batch, beams = plan.batch_size, config.num_beams
    groups = config.num_beam_groups
    size = beams // groups
    prompt_length, max_length = runner.length, runner.max_length
    vocab_extra_eos = plan.eos.shape[0] if plan.eos is not None else 0
    keep = max(2, 1 + vocab_extra_eos) * size
    top_mask = torch.cat([torch.ones(size, dtype=torch.bool), torch.zeros(keep - size, dtype=torch.bool)]).to(plan.device)
    fill = plan.pad_token_id if plan.pad_token_id is not None else 0
    length_penalty, early_stopping = config.length_penalty, config.early_stopping
    recorder = Recorder(plan)
    want_hidden, want_attentions = recorder.wants_model_extras
    prompts = runner.input_ids.view(batch, groups, size, prompt_length)
    states = [
        _GroupState(batch, size, max_length, prompts[:, g], fill, max_length - prompt_length) for g in range(groups)
    ]
    row_offset = torch.arange(batch, device=plan.device).view(-1, 1) * beams
    cur = prompt_length
    while True:
        outputs = runner.step(output_hidden_states=want_hidden, output_attentions=want_attentions)
        logits = outputs.logits[:, -1, :].float()
        vocab = logits.shape[-1]
        log_probs = logits.log_softmax(dim=-1)
        current_ids = runner.input_ids
        processed_all = torch.empty_like(log_probs) if recorder.scores is not None else None
        chosen_tokens = torch.empty(batch, beams, dtype=torch.long, device=plan.device)
        sources = torch.empty(batch, beams, dtype=torch.long, device=plan.device)
        for g, state in enumerate(states):
            rows = (row_offset + g * size + torch.arange(size, device=plan.device)).view(-1)
            group_log_probs = log_probs.index_select(0, rows)
            if plan.processors:
                group_log_probs = plan.processors(current_ids.index_select(0, rows), group_log_probs)
            if g > 0 and config.diversity_penalty:
                counts = torch.zeros(batch, vocab, dtype=group_log_probs.dtype, device=plan.device)
                counts.scatter_add_(1, chosen_tokens[:, : g * size], torch.ones_like(chosen_tokens[:, : g * size], dtype=counts.dtype))
                group_log_probs = group_log_probs - config.diversity_penalty * counts.repeat_interleave(size, dim=0)
            if processed_all is not None:
                processed_all[rows] = group_log_probs
            tokens, source = _step_group(
                state, group_log_probs, plan, cur, batch, size, keep, top_mask, vocab,
                g * size, row_offset, length_penalty, early_stopping, prompt_length, max_length,
            )
            chosen_tokens[:, g * size : (g + 1) * size] = tokens
            sources[:, g * size : (g + 1) * size] = source + g * size
        recorder.record(processed_all, logits, outputs)
        del outputs
        runner.reorder((sources + row_offset).view(-1))
        running = torch.stack([state.running for state in states], dim=1).view(batch * beams, max_length)
        runner.sequences[:, : cur + 1] = running[:, : cur + 1]
        runner.length = cur + 1
        cur += 1
        for state in states:
            _update_improvable(state, cur, prompt_length, max_length, length_penalty, early_stopping)
        yield GenerationStep(tokens=runner.sequences[:, cur - 1 : cur], finished=torch.zeros(runner.rows, dtype=torch.bool))
        improvable = any(bool(state.improvable.any()) for state in states)
        all_full = all(bool(state.is_finished.all()) for state in states) and early_stopping is True
        all_hit = all(bool(state.hits.all()) for state in states)
        if not improvable or all_full or all_hit:
            break
    if runner.cache is not None:
        runner.cache.holds_beams = True
    return _finish(plan, states, recorder, batch, groups, size, prompt_length)


def _step_group(
    state: _GroupState,
    log_probs: torch.Tensor,
    plan: GenerationPlan,
    cur: int,
    batch: int,
    size: int,
    keep: int,
    top_mask: torch.Tensor,
    vocab: int,
    first_beam: int,
    row_offset: torch.Tensor,
    length_penalty: float,
    early_stopping: bool | str,
    prompt_length: int,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance one group by a token; return (chosen tokens, source beam within the group), both [batch, size]."""
    accumulated = (log_probs.view(batch, size, vocab) + state.running_scores[:, :, None]).view(batch, size * vocab)
    if plan.config.do_sample:
        picked = torch.multinomial(accumulated.softmax(dim=-1), num_samples=keep)
        values = accumulated.gather(1, picked)
        values, order = values.sort(dim=-1, descending=True)
        picked = picked.gather(-1, order)
    else:
        values, picked = torch.topk(accumulated, k=keep)
    source = picked // vocab
    tokens = picked % vocab
    candidates = _gather(state.running, source)
    candidates[:, :, cur] = tokens
    candidate_indices = _gather(state.running_indices, source)
    candidate_indices[:, :, cur - prompt_length] = (source + first_beam + row_offset).to(torch.int32)
    hits = plan.criteria(candidates[:, :, : cur + 1].reshape(batch * keep, cur + 1), None).view(batch, keep)

    # the best continuations that did not stop keep running
    running_values = values + hits.to(torch.float32) * _NEG
    best = torch.topk(running_values, k=size)[1]
    state.running = _gather(candidates, best)
    state.running_scores = _gather(running_values, best)
    state.running_indices = _gather(candidate_indices, best)
    state.hits = hits

    # continuations that stopped among the first ``size`` may enter the finished set
    just_finished = hits & top_mask[None, :]
    scores = values / ((cur + 1 - prompt_length) ** length_penalty)
    full = torch.all(state.is_finished, dim=-1, keepdim=True) & (early_stopping is True)
    scores += full.to(torch.float32) * _NEG
    scores += (~state.improvable).to(torch.float32) * _NEG
    scores += (~just_finished) * _NEG
    merged = torch.cat((state.finished, candidates), dim=1)
    merged_scores = torch.cat((state.finished_scores, scores), dim=1)
    merged_indices = torch.cat((state.finished_indices, candidate_indices), dim=1)
    merged_finished = torch.cat((state.is_finished, just_finished), dim=1)
    top = torch.topk(merged_scores, k=size)[1]
    state.finished = _gather(merged, top)
    state.finished_scores = _gather(merged_scores, top)
    state.finished_indices = _gather(merged_indices, top)
    state.is_finished = _gather(merged_finished, top)
    return state.running[:, :, cur], _gather(source, best)


def _update_improvable(
    state: _GroupState, cur: int, prompt_length: int, max_length: int, length_penalty: float, early_stopping: bool | str
) -> None:
    """Whether some running beam may still beat the worst finished hypothesis (the stopping heuristic)."""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_length - prompt_length
    else:
        best_length = cur - prompt_length
    best_running = state.running_scores[:, :1] / (best_length**length_penalty)
    worst_finished = torch.where(
        state.is_finished, torch.min(state.finished_scores, dim=1, keepdim=True)[0], torch.tensor(_NEG, device=best_running.device)
    )
    state.improvable = state.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)


def _finish(
    plan: GenerationPlan, states: list[_GroupState], recorder: Recorder, batch: int, groups: int, size: int, prompt_length: int
) -> Any:
    returned = plan.config.num_return_sequences
    sequences = torch.cat([s.finished for s in states], dim=1)
    scores = torch.cat([s.finished_scores for s in states], dim=1)
    indices = torch.cat([s.finished_indices for s in states], dim=1)
    if groups > 1:
        order = torch.sort(scores, dim=1, descending=True, stable=True)[1]
        sequences, scores, indices = _gather(sequences, order), _gather(scores, order), _gather(indices, order)
    sequences = sequences[:, :returned].reshape(batch * returned, -1)
    scores = scores[:, :returned].reshape(batch * returned)
    indices = indices[:, :returned].reshape(batch * returned, -1)
    generated = int((indices + 1).bool().sum(dim=1).max())
    sequences = sequences[:, : prompt_length + generated]
    indices = indices[:, :generated]
    if plan.placeholder_length:
        sequences = sequences[:, plan.placeholder_length :]
    config = plan.config
    if not config.return_dict_in_generate:
        return sequences
    fields = dict(
        sequences=sequences,
        sequences_scores=scores if config.output_scores else None,
        scores=tuple(recorder.scores) if recorder.scores is not None else None,
        logits=tuple(recorder.logits) if recorder.logits is not None else None,
        beam_indices=indices.long(),
        past_key_values=plan.runner.cache,
    )
    if plan.is_encoder_decoder:
        encoder = plan.runner.model_kwargs.get("encoder_outputs")
        return GenerateBeamEncoderDecoderOutput(
            **fields,
            encoder_attentions=getattr(encoder, "attentions", None),
            encoder_hidden_states=getattr(encoder, "hidden_states", None),
            decoder_attentions=tuple(recorder.attentions) if recorder.attentions is not None else None,
            cross_attentions=tuple(recorder.cross_attentions) if recorder.cross_attentions is not None else None,
            decoder_hidden_states=tuple(recorder.hidden_states) if recorder.hidden_states is not None else None,
        )
    return GenerateBeamDecoderOnlyOutput(
        **fields,
        attentions=tuple(recorder.attentions) if recorder.attentions is not None else None,
        hidden_states=tuple(recorder.hidden_states) if recorder.hidden_states is not None else None,
    )


__all__ = ["beam_search"]
