"""Logits processors: functions of (token ids so far, next-token scores) that reshape the scores.

Each processor is called as ``processor(input_ids, scores)`` with
``input_ids`` [batch, length] (the prompt and everything generated so far)
and ``scores`` [batch, vocab] (float32), and returns the new scores. They
are applied in the order transformers applies them (see
:func:`build_logits_processors`), so seeded sampling and beam scores agree
with it. Removed tokens get ``-inf``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch.nn import functional as F

from bestiary.errors import GenerationError

NEG_INF = -float("inf")


class LogitsProcessor:
    """Base class: subclasses implement ``__call__(input_ids, scores) -> scores``."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({shown})"


class LogitsProcessorList(list):
    """Processors applied one after the other."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


# -- sampling warpers -------------------------------------------------------------
class TemperatureLogitsWarper(LogitsProcessor):
    """Divide scores by ``temperature`` (> 1 flattens, < 1 sharpens the distribution)."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise GenerationError(f"temperature must be > 0, got {temperature}; use do_sample=False for greedy decoding.")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keep the ``top_k`` highest scores (ties with the k-th score are kept)."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        if top_k <= 0:
            raise GenerationError(f"top_k must be a positive integer, got {top_k}.")
        self.top_k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of best tokens whose probability reaches ``top_p``."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 < top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {top_p}.")
        self.top_p = float(top_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1.0 - self.top_p)
        drop[..., -self.min_tokens_to_keep :] = False
        return scores.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


class MinPLogitsWarper(LogitsProcessor):
    """Keep tokens whose probability is at least ``min_p`` times the best token's probability."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 <= min_p <= 1.0:
            raise GenerationError(f"min_p must be in [0, 1], got {min_p}.")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
        drop = probs < threshold
        best = torch.topk(probs, self.min_tokens_to_keep, dim=-1).indices
        drop.scatter_(-1, best, False)
        return scores.masked_fill(drop, NEG_INF)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling: keep tokens whose surprisal is closest to the entropy, up to mass ``mass``."""

    def __init__(self, mass: float = 0.9, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 < mass <= 1.0:
            raise GenerationError(f"typical_p must be in (0, 1], got {mass}.")
        self.mass = float(mass)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = scores.log_softmax(dim=-1)
        entropy = -(log_probs * log_probs.exp()).nansum(dim=-1, keepdim=True)
        distance = (-log_probs - entropy).abs()
        sorted_distance, order = torch.sort(distance, dim=-1)
        cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.mass).sum(dim=-1, keepdim=True).clamp(max=scores.shape[-1] - 1)
        drop = sorted_distance > sorted_distance.gather(-1, last)
        drop[..., : self.min_tokens_to_keep] = False
        return scores.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


class EpsilonLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below ``epsilon`` (Hewitt et al., truncation sampling)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 < epsilon < 1.0:
            raise GenerationError(f"epsilon_cutoff must be in (0, 1), got {epsilon}.")
        self.epsilon = float(epsilon)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        drop = probs < self.epsilon
        k = min(self.min_tokens_to_keep, scores.shape[-1])
        drop &= scores < torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(drop, NEG_INF)


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling: drop tokens below min(eta, sqrt(eta) * exp(-entropy))."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1) -> None:
        if not 0.0 < epsilon < 1.0:
            raise GenerationError(f"eta_cutoff must be in (0, 1), got {epsilon}.")
        self.epsilon = float(epsilon)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        eta = torch.minimum(torch.full_like(entropy, self.epsilon), math.sqrt(self.epsilon) * torch.exp(-entropy))
        drop = probs < eta[..., None]
        k = min(self.min_tokens_to_keep, scores.shape[-1])
        drop &= scores < torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(drop, NEG_INF)


# -- penalties and constraints ------------------------------------------------------
class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Make tokens already in the sequence less likely (CTRL): positive scores / penalty, negative * penalty.

    ``prompt_ignore_length`` (an int, or a [batch] tensor such as the left
    padding lengths) leaves the first tokens of each row out.
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | None = None) -> None:
        if not penalty > 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {penalty}.")
        self.penalty = float(penalty)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif isinstance(ignore, torch.Tensor):
            columns = torch.arange(input_ids.shape[1], device=input_ids.device)
            input_ids = input_ids.masked_fill(columns[None, :] < ignore.to(input_ids.device)[:, None], vocab)
        padded = F.pad(scores, (0, 1))  # column ``vocab`` absorbs ignored positions
        seen = padded.gather(-1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        padded = padded.scatter(-1, input_ids, seen)
        return padded[:, :vocab]


class EncoderRepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Make tokens of the encoder input (or of the prompt, for decoder-only models) *more* likely: the inverse of repetition_penalty."""

    def __init__(self, penalty: float, encoder_input_ids: torch.LongTensor) -> None:
        if not penalty > 0:
            raise GenerationError(f"encoder_repetition_penalty must be > 0, got {penalty}.")
        self.penalty = 1.0 / float(penalty)
        self.encoder_input_ids = encoder_input_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ids = self.encoder_input_ids.to(scores.device)
        if scores.shape[0] > ids.shape[0]:
            ids = ids.repeat_interleave(scores.shape[0] // ids.shape[0], dim=0)
        chosen = scores.gather(1, ids)
        chosen = torch.where(chosen < 0, chosen * self.penalty, chosen / self.penalty)
        return scores.scatter(1, ids, chosen)


class EncoderNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid tokens that would repeat an n-gram of the encoder input (or prompt) of the same row."""

    def __init__(self, ngram_size: int, encoder_input_ids: torch.LongTensor) -> None:
        if ngram_size <= 0:
            raise GenerationError(f"encoder_no_repeat_ngram_size must be a positive integer, got {ngram_size}.")
        self.ngram_size = int(ngram_size)
        self.followers: list[dict[tuple[int, ...], set[int]]] = []
        for row in encoder_input_ids.tolist():
            table: dict[tuple[int, ...], set[int]] = {}
            for i in range(len(row) - self.ngram_size + 1):
                table.setdefault(tuple(row[i : i + self.ngram_size - 1]), set()).add(row[i + self.ngram_size - 1])
            self.followers.append(table)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        per_row = scores.shape[0] // len(self.followers)
        length = input_ids.shape[1]
        if length + 1 < self.ngram_size:
            return scores
        scores = scores.clone()
        for hypothesis, tokens in enumerate(input_ids.tolist()):
            prefix = tuple(tokens[length - self.ngram_size + 1 :]) if self.ngram_size > 1 else ()
            banned = self.followers[hypothesis // per_row].get(prefix)
            if banned:
                scores[hypothesis, list(banned)] = NEG_INF
        return scores


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid any token that would repeat an n-gram of size ``ngram_size`` already in the sequence."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size <= 0:
            raise GenerationError(f"no_repeat_ngram_size must be a positive integer, got {ngram_size}.")
        self.ngram_size = int(ngram_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        banned = banned_ngram_tokens(input_ids, self.ngram_size)
        if not banned:
            return scores
        scores = scores.clone()
        for row, tokens in banned:
            scores[row, tokens] = NEG_INF
        return scores


def banned_ngram_tokens(input_ids: torch.LongTensor, n: int) -> list[tuple[int, list[int]]]:
    """For each row, the tokens that would complete an n-gram seen earlier in that row."""
    length = input_ids.shape[1]
    if length + 1 < n:
        return []
    banned = []
    for row, tokens in enumerate(input_ids.tolist()):
        prefix = tuple(tokens[length - n + 1 :]) if n > 1 else ()
        found = [tokens[i + n - 1] for i in range(length - n + 1) if tuple(tokens[i : i + n - 1]) == prefix]
        if found:
            banned.append((row, found))
    return banned


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Add a bias to a token when the tokens before it complete a given sequence.

    ``sequence_bias`` maps token-id sequences to biases (a dict with tuple
    keys, or a list of ``(ids, bias)`` pairs). A one-token sequence biases that
    token at every step; a longer one biases its last token only when the
    sequence so far ends with the others.
    """

    def __init__(self, sequence_bias: dict[tuple[int, ...], float] | Sequence[tuple[Sequence[int], float]]) -> None:
        pairs = sequence_bias.items() if isinstance(sequence_bias, dict) else sequence_bias
        self.sequence_bias = [(tuple(int(t) for t in ids), float(bias)) for ids, bias in pairs]
        for ids, _ in self.sequence_bias:
            if not ids:
                raise GenerationError("sequence_bias keys must hold at least one token id.")
        self._static: torch.Tensor | None = None

    def _static_bias(self, scores: torch.Tensor) -> torch.Tensor:
        if self._static is None or self._static.shape[0] != scores.shape[-1] or self._static.device != scores.device:
            bias = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
            for ids, value in self.sequence_bias:
                if len(ids) == 1:
                    if ids[0] >= scores.shape[-1]:
                        raise GenerationError(f"sequence_bias names token {ids[0]}, beyond the vocabulary ({scores.shape[-1]}).")
                    bias[ids[0]] = value
            self._static = bias
        return self._static

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores + self._static_bias(scores)
        longer = [(ids, bias) for ids, bias in self.sequence_bias if len(ids) > 1]
        if not longer:
            return scores
        length = input_ids.shape[1]
        rows = input_ids.tolist()
        for ids, bias in longer:
            prefix = list(ids[:-1])
            if len(prefix) > length:
                continue
            for row, tokens in enumerate(rows):
                if tokens[length - len(prefix) :] == prefix:
                    scores[row, ids[-1]] += bias
        return scores


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Forbid token sequences (``bad_words_ids``): their last token gets -inf when the rest is already there."""

    def __init__(self, bad_words_ids: Iterable[Sequence[int]], eos_token_id: int | Sequence[int] | None = None) -> None:
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        words = [list(ids) for ids in bad_words_ids if not (len(ids) == 1 and ids[0] in eos)]
        super().__init__([(ids, NEG_INF) for ids in words])


def _forbid(
    scores: torch.Tensor, token_ids: list[int], index_by_device: dict[torch.device, torch.Tensor]
) -> torch.Tensor:
    """A copy of ``scores`` with ``token_ids`` at -inf (their index tensor cached per device: this runs every step)."""
    index = index_by_device.get(scores.device)
    if index is None:
        index = index_by_device[scores.device] = torch.tensor(token_ids, dtype=torch.long, device=scores.device)
    return scores.index_fill(1, index, NEG_INF)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Forbid end-of-sequence tokens while the sequence is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_id: int | Sequence[int]) -> None:
        self.min_length = int(min_length)
        self.eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self._eos_index: dict[torch.device, torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] < self.min_length:
            return _forbid(scores, self.eos_token_id, self._eos_index)
        return scores


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Forbid end-of-sequence tokens until ``min_new_tokens`` tokens were generated after the prompt."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_id: int | Sequence[int]) -> None:
        self.prompt_length = int(prompt_length)
        self.min_new_tokens = int(min_new_tokens)
        self.eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self._eos_index: dict[torch.device, torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt_length < self.min_new_tokens:
            return _forbid(scores, self.eos_token_id, self._eos_index)
        return scores


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    """Force ``bos_token_id`` as the first generated token (when the input holds one token)."""

    def __init__(self, bos_token_id: int) -> None:
        self.bos_token_id = int(bos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] == 1:
            scores = torch.full_like(scores, NEG_INF)
            scores[:, self.bos_token_id] = 0
        return scores


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """Force an end-of-sequence token as the last token when ``max_length`` is reached."""

    def __init__(self, max_length: int, eos_token_id: int | Sequence[int]) -> None:
        self.max_length = int(max_length)
        self.eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] == self.max_length - 1:
            scores = torch.full_like(scores, NEG_INF)
            scores[:, self.eos_token_id] = 0
        return scores


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Never generate the tokens in ``suppress_tokens``."""

    def __init__(self, suppress_tokens: Sequence[int]) -> None:
        self.suppress_tokens = [int(t) for t in suppress_tokens]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.suppress_tokens] = NEG_INF
        return scores


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Forbid ``begin_suppress_tokens`` as the first generated token (at length ``begin_index``)."""

    def __init__(self, begin_suppress_tokens: Sequence[int], begin_index: int) -> None:
        self.begin_suppress_tokens = [int(t) for t in begin_suppress_tokens]
        self.begin_index = int(begin_index)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] == self.begin_index:
            scores = scores.clone()
            scores[:, self.begin_suppress_tokens] = NEG_INF
        return scores


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """Replace NaN by 0 and +/-inf by the largest finite values, so sampling cannot crash."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        finfo = torch.finfo(scores.dtype)
        scores = torch.nan_to_num(scores, nan=0.0)
        return scores.clamp(min=finfo.min, max=finfo.max)


class LogitNormalization(LogitsProcessor):
    """Turn scores into log-probabilities (after every other processor)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.log_softmax(dim=-1)


class PrefixConstrainedLogitsProcessor(LogitsProcessor):
    """Allow only the tokens ``prefix_allowed_tokens_fn(batch_id, input_ids)`` returns for each row."""

    def __init__(self, prefix_allowed_tokens_fn, num_beams: int) -> None:
        self.prefix_allowed_tokens_fn = prefix_allowed_tokens_fn
        self.num_beams = num_beams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(scores, NEG_INF)
        for row in range(input_ids.shape[0]):
            allowed = self.prefix_allowed_tokens_fn(row // self.num_beams, input_ids[row])
            if not allowed:
                raise GenerationError(f"prefix_allowed_tokens_fn returned no token for row {row}; it must allow at least one.")
            mask[row, list(allowed)] = 0
        return scores + mask


# -- assembling the list ---------------------------------------------------------------
def build_logits_processors(
    config,
    *,
    prompt_length: int,
    padding_lengths: torch.Tensor | None,
    vocab_size: int,
    device: torch.device,
    custom: Sequence[LogitsProcessor] | None = None,
    prefix_allowed_tokens_fn=None,
    encoder_input_ids: torch.LongTensor | None = None,
) -> LogitsProcessorList:
    """The processors ``config`` asks for, in transformers' order, with ``custom`` ones merged in.

    A custom processor of the same class as a built one replaces it; other
    custom processors run after the built ones and before the sampling
    warpers.
    """
    eos = config.eos_token_ids
    built: list[LogitsProcessor] = []
    if config.sequence_bias:
        built.append(SequenceBiasLogitsProcessor(config.sequence_bias))
    usable_encoder_ids = encoder_input_ids is not None and encoder_input_ids.dim() == 2 and not bool((encoder_input_ids < 0).any())
    if config.encoder_repetition_penalty != 1.0:
        if not usable_encoder_ids:
            raise GenerationError("encoder_repetition_penalty needs token ids as the (encoder) input; it cannot use embeddings.")
        built.append(EncoderRepetitionPenaltyLogitsProcessor(config.encoder_repetition_penalty, encoder_input_ids))
    if config.repetition_penalty != 1.0:
        built.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, padding_lengths))
    if config.no_repeat_ngram_size > 0:
        built.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.encoder_no_repeat_ngram_size > 0:
        if not usable_encoder_ids:
            raise GenerationError("encoder_no_repeat_ngram_size needs token ids as the (encoder) input; it cannot use embeddings.")
        built.append(EncoderNoRepeatNGramLogitsProcessor(config.encoder_no_repeat_ngram_size, encoder_input_ids))
    if config.bad_words_ids:
        built.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
    if config.min_length > 0 and eos:
        built.append(MinLengthLogitsProcessor(config.min_length, eos))
    if config.min_new_tokens and eos:
        built.append(MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
    if prefix_allowed_tokens_fn is not None:
        built.append(PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn, max(config.num_beams, config.num_return_sequences)))
    if config.forced_bos_token_id is not None:
        built.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
    if config.forced_eos_token_id is not None:
        built.append(ForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id))
    if config.remove_invalid_values:
        built.append(InfNanRemoveLogitsProcessor())
    if config.suppress_tokens:
        built.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    if config.begin_suppress_tokens:
        begin = prompt_length if (prompt_length > 1 or config.forced_bos_token_id is None) else prompt_length + 1
        built.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin))
    processors = _merge(built, list(custom or ()))
    if config.do_sample:
        keep = len(eos) + 1 if config.num_beams > 1 and eos else (2 if config.num_beams > 1 else 1)
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k, keep))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p, keep))
        if config.min_p is not None:
            processors.append(MinPLogitsWarper(config.min_p, keep))
        if config.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(config.typical_p, keep))
        if 0.0 < config.epsilon_cutoff < 1.0:
            processors.append(EpsilonLogitsWarper(config.epsilon_cutoff, keep))
        if 0.0 < config.eta_cutoff < 1.0:
            processors.append(EtaLogitsWarper(config.eta_cutoff, keep))
    if config.watermarking_config is not None:
        from bestiary.generation.watermark import WatermarkLogitsProcessor

        processors.append(WatermarkLogitsProcessor.from_config(config.watermarking_config, vocab_size, device))
    if config.renormalize_logits:
        processors.append(LogitNormalization())
    return processors


def _merge(built: list[LogitsProcessor], custom: list[LogitsProcessor]) -> LogitsProcessorList:
    merged = LogitsProcessorList()
    used = set()
    for processor in built:
        replacement = next((c for c in custom if type(c) is type(processor)), None)
        if replacement is not None:
            used.add(id(replacement))
        merged.append(replacement if replacement is not None else processor)
    merged.extend(c for c in custom if id(c) not in used)
    return merged


__all__ = [
    "EncoderNoRepeatNGramLogitsProcessor",
    "EncoderRepetitionPenaltyLogitsProcessor",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "LogitNormalization",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper",
    "NoBadWordsLogitsProcessor",
    "NoRepeatNGramLogitsProcessor",
    "PrefixConstrainedLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "SequenceBiasLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
    "build_logits_processors",
]
