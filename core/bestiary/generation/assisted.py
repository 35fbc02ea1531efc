"""Assisted decoding: a cheap proposer drafts tokens, the model verifies them in one forward pass.

Proposers (``CandidateGenerator``):

- :class:`DraftModelCandidates`: a small draft model sharing the tokenizer
  (``assistant_model=``), drafting ``num_assistant_tokens`` tokens per round
  (the "heuristic" schedule adds 2 after a fully accepted round and removes 1
  otherwise).
- :class:`UniversalDraftCandidates`: a draft model with a different tokenizer
  (``assistant_model=`` with ``tokenizer=`` and ``assistant_tokenizer=``):
  the text so far is re-encoded for the draft model and its drafted text is
  re-encoded for the main model.
- :class:`PromptLookupCandidates`: no model at all
  (``prompt_lookup_num_tokens=``): find the latest n-gram (up to
  ``max_matching_ngram_size`` tokens) earlier in the sequence and propose
  what followed it.

Verification (one forward over the drafted tokens, keeping ``n + 1`` logits):

- greedy: accept drafted tokens while they equal the model's argmax, then
  add the model's own next token; the output is exactly greedy decoding.
- sampling with a draft model's probabilities ``q``: the speculative
  sampling rule (Leviathan et al., 2023; Chen et al., 2023) accepts token
  ``x`` with probability ``min(1, p(x) / q(x))``; at the first rejection the
  replacement is drawn from ``max(0, p - q)`` renormalised, and when every
  draft is accepted a bonus token is drawn from ``p``. Outputs follow the
  model's own distribution ``p``.
- sampling without ``q`` (prompt lookup, different tokenizers): sample the
  model's token at each position and accept drafts while they agree.

The cache is cropped back after each round, so it must support ``crop``
(dynamic and static caches do). Batches of one sequence only.
"""

from __future__ import annotations

from typing import Any

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import DynamicCache
from bestiary.generation.decoding import Recorder, StrategyRun, finish_output, select_tokens
from bestiary.generation.outputs import GenerationStep
from bestiary.generation.prepare import GenerationPlan
from bestiary.generation.runner import ModelRunner


class CandidateGenerator:
    """Proposes draft tokens that continue a sequence."""

    def candidates(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Up to ``budget`` draft tokens [1, n] and, when known, their draft scores [1, n, vocab]."""
        raise NotImplementedError

    def update(self, accepted: int, proposed: int) -> None:
        """Learn from a round where ``accepted`` of ``proposed`` drafts were accepted."""


class DraftModelCandidates(CandidateGenerator):
    """Drafts with a small model that shares the main model's tokenizer."""

    def __init__(self, plan: GenerationPlan, assistant_model: Any) -> None:
        config = plan.config
        self.model = assistant_model
        self.eos = plan.eos
        self.processors = plan.processors
        self.do_sample = config.do_sample
        self.num_tokens = config.num_assistant_tokens
        self.schedule = config.num_assistant_tokens_schedule
        self.confidence = config.assistant_confidence_threshold
        self.cache = DynamicCache()
        self.previous: torch.LongTensor | None = None
        self._check_vocab(plan)

    def _check_vocab(self, plan: GenerationPlan) -> None:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        main_head = plan.model.get_output_embeddings() if hasattr(plan.model, "get_output_embeddings") else None
        if head is not None and main_head is not None and head.weight.shape[0] != main_head.weight.shape[0]:
            raise GenerationError(
                f"The assistant model's vocabulary ({head.weight.shape[0]}) differs from the model's "
                f"({main_head.weight.shape[0]}); pass tokenizer= and assistant_tokenizer= for universal assisted decoding."
            )

    def _runner(self, input_ids: torch.LongTensor, budget: int) -> ModelRunner:
        """A runner over ``input_ids`` whose cache keeps what the previous round computed on the same prefix."""
        common = _common_prefix(self.previous, input_ids)
        self.cache.crop(min(common, input_ids.shape[1] - 1))
        return ModelRunner(
            self.model,
            input_ids,
            attention_mask=None,
            cache=self.cache,
            max_length=input_ids.shape[1] + budget,
        )

    def _draft(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        count = min(int(self.num_tokens), budget)
        if count <= 0:
            self.previous = input_ids
            return input_ids[:, :0], None
        runner = self._runner(input_ids, count)
        tokens, scores = [], []
        for _ in range(count):
            outputs = runner.step()
            logits = outputs.logits[:, -1, :].float()
            processed = self.processors(runner.input_ids, logits) if self.processors else logits
            token = select_tokens(processed, self.do_sample)
            runner.append(token[:, None])
            tokens.append(token)
            scores.append(processed)
            if self.eos is not None and bool(torch.isin(token, self.eos).any()):
                break
            if self.confidence and float(processed.softmax(dim=-1)[0, token[0]]) < self.confidence:
                break  # the draft is unsure: let the model verify what we have
        self.previous = runner.input_ids
        return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)

    def candidates(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        return self._draft(input_ids, budget)

    def update(self, accepted: int, proposed: int) -> None:
        if self.schedule in ("heuristic", "heuristic_transient"):
            if proposed and accepted == proposed:
                self.num_tokens += 2
            else:
                self.num_tokens = max(1, self.num_tokens - 1)


class UniversalDraftCandidates(DraftModelCandidates):
    """Drafts with a model whose tokenizer differs: text is re-encoded in both directions."""

    def __init__(self, plan: GenerationPlan, assistant_model: Any, tokenizer: Any, assistant_tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.assistant_tokenizer = assistant_tokenizer
        super().__init__(plan, assistant_model)
        self.do_sample = False  # drafts are verified by agreement, so draw them greedily
        self.processors = None
        self.eos = None
        self.confidence = None

    def _check_vocab(self, plan: GenerationPlan) -> None:
        """Vocabularies may differ here."""

    def _encode(self, tokenizer: Any, text: str, device: torch.device) -> torch.LongTensor:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long, device=device)

    def candidates(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        device = input_ids.device
        text = self.tokenizer.decode(input_ids[0].tolist(), skip_special_tokens=False)
        assistant_ids = self._encode(self.assistant_tokenizer, text, device)
        if assistant_ids.shape[1] == 0:
            return input_ids[:, :0], None
        drafted, _ = self._draft(assistant_ids, int(self.num_tokens))
        if drafted.shape[1] == 0:
            return input_ids[:, :0], None
        prefix_text = self.assistant_tokenizer.decode(assistant_ids[0].tolist(), skip_special_tokens=False)
        full_text = self.assistant_tokenizer.decode(torch.cat([assistant_ids, drafted], dim=1)[0].tolist(), skip_special_tokens=False)
        new_text = full_text[len(prefix_text) :] if full_text.startswith(prefix_text) else self.assistant_tokenizer.decode(drafted[0].tolist())
        if not new_text:
            return input_ids[:, :0], None
        return self._encode(self.tokenizer, new_text, device)[:, :budget], None


class PromptLookupCandidates(CandidateGenerator):
    """Proposes the continuation of the latest n-gram's earlier occurrence (prompt lookup decoding)."""

    def __init__(self, plan: GenerationPlan) -> None:
        self.num_tokens = int(plan.config.prompt_lookup_num_tokens)
        self.max_ngram = int(plan.config.max_matching_ngram_size)
        self.eos = plan.eos

    def candidates(self, input_ids: torch.LongTensor, budget: int) -> tuple[torch.LongTensor, torch.Tensor | None]:
        sequence = input_ids[0]
        length = sequence.shape[0]
        count = min(self.num_tokens, budget)
        empty = input_ids[:, :0]
        if count <= 0:
            return empty, None
        for size in range(min(self.max_ngram, length - 1), 0, -1):
            windows = sequence.unfold(0, size, 1)
            matches = (windows == sequence[-size:]).all(dim=1).nonzero().flatten().tolist()
            for start in matches:
                begin = start + size
                end = min(begin + count, length)
                if begin >= end:
                    continue
                chosen = sequence[begin:end]
                if self.eos is not None:
                    stops = torch.isin(chosen, self.eos).nonzero()
                    if stops.numel():
                        chosen = chosen[: int(stops[0])]
                return chosen[None, :], None
        return empty, None


def speculative_sampling(
    drafted: torch.LongTensor, draft_scores: torch.Tensor, target_scores: torch.Tensor
) -> tuple[torch.LongTensor, int]:
    """Accepted tokens (drafts kept plus one new token) and how many drafts were kept.

    ``drafted`` [1, n], ``draft_scores`` [1, n, V] (q), ``target_scores``
    [1, n + 1, V] (p), all as processed logits.
    """
    count = drafted.shape[1]
    positions = torch.arange(count, device=drafted.device)
    q = draft_scores[0].softmax(dim=-1)
    p = target_scores[0].softmax(dim=-1)
    q_drafted = q[positions, drafted[0]]
    p_drafted = p[positions, drafted[0]]
    ratio = p_drafted / q_drafted
    accepted = torch.rand_like(ratio) <= ratio
    kept = int((~accepted).cumsum(dim=-1).eq(0).sum())
    if kept < count:
        residual = (p[kept] - q[kept]).clamp(min=0)
        total = residual.sum()
        distribution = residual / total if total > 0 else p[kept]
    else:
        distribution = p[kept]
    new_token = torch.multinomial(distribution, num_samples=1)
    return torch.cat([drafted[0, :kept], new_token])[None, :], kept


def _common_prefix(previous: torch.LongTensor | None, current: torch.LongTensor) -> int:
    if previous is None:
        return 0
    length = min(previous.shape[1], current.shape[1])
    if length == 0:
        return 0
    differ = (previous[0, :length] != current[0, :length]).nonzero()
    return int(differ[0]) if differ.numel() else length


def make_candidate_generator(plan: GenerationPlan) -> CandidateGenerator:
    """The proposer that the plan's settings ask for."""
    if plan.assistant_model is not None:
        if plan.assistant_tokenizer is not None:
            return UniversalDraftCandidates(plan, plan.assistant_model, plan.tokenizer, plan.assistant_tokenizer)
        return DraftModelCandidates(plan, plan.assistant_model)
    return PromptLookupCandidates(plan)


def assisted_decoding(plan: GenerationPlan) -> StrategyRun:
    """Greedy or sampled decoding, verifying drafted tokens in one forward pass per round."""
    runner, config = plan.runner, plan.config
    if runner.rows != 1:
        raise GenerationError(
            f"Assisted and prompt-lookup decoding handle one sequence at a time, got {runner.rows} rows; "
            "call generate() per prompt, or drop assistant_model/prompt_lookup_num_tokens."
        )
    if runner.cache is None or not runner.cache.is_croppable:
        raise GenerationError(
            "Assisted decoding rolls rejected drafts back, which needs a cache that can be cropped "
            "(dynamic or static); keep use_cache=True and use one of those."
        )
    proposer = make_candidate_generator(plan)
    recorder = Recorder(plan)
    processors = plan.processors
    while True:
        current = runner.length
        budget = runner.max_length - current - 1
        drafted, draft_scores = proposer.candidates(runner.input_ids, max(budget, 0))
        drafted = drafted[:, : max(budget, 0)]
        count = drafted.shape[1]
        if draft_scores is not None:
            draft_scores = draft_scores[:, :count]
        runner.append(drafted)
        outputs = runner.step(logits_to_keep=count + 1)
        raw = outputs.logits[:, -(count + 1) :, :].float()
        processed = raw.clone()
        if processors:
            for i in range(count + 1):
                processed[:, i] = processors(runner.sequences[:, : current + i], raw[:, i])
        if config.do_sample and draft_scores is not None and count:
            accepted, kept = speculative_sampling(drafted, draft_scores, processed)
        else:
            chosen = select_tokens(processed[0], config.do_sample)[None, :]
            agree = drafted == chosen[:, :count]
            kept = int((~agree).cumsum(dim=-1).eq(0).sum())
            accepted = chosen[:, : kept + 1]
        if plan.eos is not None:
            stops = torch.isin(accepted[0], plan.eos).nonzero()
            if stops.numel():
                accepted = accepted[:, : int(stops[0]) + 1]
        kept = accepted.shape[1] - 1
        runner.rollback(current + kept)
        runner.append(accepted[:, kept:])
        for i in range(kept + 1):
            recorder.record(processed[:, i], raw[:, i])
        proposer.update(kept, count)
        finished = plan.criteria(runner.input_ids, None)
        yield GenerationStep(tokens=accepted, finished=finished)
        if bool(finished.all()):
            break
    return finish_output(plan, runner.input_ids, recorder)


__all__ = [
    "CandidateGenerator",
    "DraftModelCandidates",
    "PromptLookupCandidates",
    "UniversalDraftCandidates",
    "assisted_decoding",
    "make_candidate_generator",
    "speculative_sampling",
]
