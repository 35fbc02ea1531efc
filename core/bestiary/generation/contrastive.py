"""Contrastive search (Su et al., 2022, "A Contrastive Framework for Neural Text Generation").

At each step the ``top_k`` most likely next tokens are candidates. Each
candidate is run through the model (all candidates of a row in one batch,
on a copy of the row's cache) to get its last-layer hidden state ``h_v``.
The chosen token maximises

    (1 - penalty_alpha) * p(v | context) - penalty_alpha * max_j cos(h_v, h_j)

where ``h_j`` are the last-layer hidden states of the tokens already in the
sequence (padding excluded). The chosen candidate's forward pass is kept: its
cache rows and next-token logits serve the next step.
"""

from __future__ import annotations

import torch

from bestiary.errors import GenerationError
from bestiary.generation.decoding import Recorder, StrategyRun, finish_output
from bestiary.generation.outputs import GenerationStep
from bestiary.generation.prepare import GenerationPlan


def _last_hidden(outputs) -> torch.Tensor:
    hidden = getattr(outputs, "decoder_hidden_states", None) or getattr(outputs, "hidden_states", None)
    if hidden is None:
        raise GenerationError("Contrastive search needs the model to return hidden states (output_hidden_states=True).")
    return hidden[-1]


def degeneration_penalty(candidates: torch.Tensor, context: torch.Tensor, context_valid: torch.Tensor | None) -> torch.Tensor:
    """Max cosine similarity of each candidate [B, k, H] with the context [B, T, H] -> [B, k]."""
    candidates = candidates / candidates.norm(dim=-1, keepdim=True)
    context = context / context.norm(dim=-1, keepdim=True)
    cosine = torch.bmm(candidates, context.transpose(1, 2))
    if context_valid is not None:
        cosine = cosine.masked_fill(~context_valid[:, None, :], -1.0)
    return cosine.amax(dim=-1)


def contrastive_search(plan: GenerationPlan) -> StrategyRun:
    """Decode with contrastive search (``penalty_alpha`` > 0, ``top_k`` > 1, greedy)."""
    runner, config = plan.runner, plan.config
    cache = runner.cache
    if cache is None:
        raise GenerationError("Contrastive search reuses the cache of its candidates; keep use_cache=True.")
    k, alpha = config.top_k, float(config.penalty_alpha)
    rows = runner.rows
    recorder = Recorder(plan)
    unfinished = torch.ones(rows, dtype=torch.bool, device=plan.device)
    pad = torch.tensor(plan.pad_token_id if plan.pad_token_id is not None else 0, device=plan.device)
    row_index = torch.arange(rows, device=plan.device)

    outputs = runner.step(output_hidden_states=True)
    context = _last_hidden(outputs).float()
    logits = outputs.logits[:, -1, :].float()
    while True:
        scores = plan.processors(runner.input_ids, logits) if plan.processors else logits
        recorder.record(scores, logits, outputs)
        top_probs, top_ids = torch.topk(scores.softmax(dim=-1), k=k, dim=-1)
        cache.batch_repeat_interleave(k)
        candidate_outputs = runner.call(top_ids.reshape(-1, 1), runner.processed, repeat_rows=k, output_hidden_states=True)
        hidden = _last_hidden(candidate_outputs)[:, -1, :].float().view(rows, k, -1)
        valid = runner.mask[:, : context.shape[1]].bool() if runner.mask is not None else None
        ranking = (1.0 - alpha) * top_probs - alpha * degeneration_penalty(hidden, context, valid)
        best = ranking.argmax(dim=-1)
        cache.batch_select_indices(row_index * k + best)
        next_tokens = top_ids[row_index, best]
        if plan.eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad)
        runner.append(next_tokens[:, None])
        runner.processed += 1  # the chosen candidate's keys/values are already in the cache
        context = torch.cat([context, hidden[row_index, best][:, None, :]], dim=1)
        logits = candidate_outputs.logits[:, -1, :].float().view(rows, k, -1)[row_index, best]
        outputs = None
        unfinished = unfinished & ~plan.criteria(runner.input_ids, scores)
        yield GenerationStep(tokens=next_tokens[:, None], finished=~unfinished)
        if not bool(unfinished.any()):
            break
    return finish_output(plan, runner.input_ids, recorder)


__all__ = ["contrastive_search", "degeneration_penalty"]
