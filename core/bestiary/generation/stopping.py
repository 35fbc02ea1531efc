"""Stopping criteria: which rows of a batch are done after the latest token.

A criterion is called as ``criterion(input_ids, scores)`` and returns a
boolean [batch] tensor (True: this row is finished). A list of criteria
finishes a row when any of them does.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from bestiary.errors import GenerationError


class StoppingCriteria:
    """Base class: subclasses implement ``__call__(input_ids, scores) -> BoolTensor[batch]``."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        raise NotImplementedError


class StoppingCriteriaList(list):
    """Criteria combined with "or"."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | criterion(input_ids, scores)
        return done

    @property
    def max_length(self) -> int | None:
        """The length limit of the first :class:`MaxLengthCriteria`, if any."""
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Stop every row once the sequence (prompt included) holds ``max_length`` tokens."""

    def __init__(self, max_length: int) -> None:
        self.max_length = int(max_length)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[-1] >= self.max_length, device=input_ids.device)


class MaxTimeCriteria(StoppingCriteria):
    """Stop every row once ``max_time`` seconds have passed since ``initial_timestamp`` (default: creation)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None) -> None:
        self.max_time = float(max_time)
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        late = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), late, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """Stop a row when its last token is one of ``eos_token_id``."""

    def __init__(self, eos_token_id: int | Sequence[int] | torch.Tensor) -> None:
        if not isinstance(eos_token_id, torch.Tensor):
            eos_token_id = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        if self.eos_token_id.device != input_ids.device:
            self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -1], self.eos_token_id)


_REPLACEMENT = "\ufffd"  # what decoders show for the bytes of an incomplete UTF-8 character
_MAX_CONTINUATION_BYTES = 3  # a UTF-8 character is a lead byte and at most three continuation bytes


class StopStringCriteria(StoppingCriteria):
    """Stop a row when the text of its latest token completes one of ``stop_strings``.

    The last tokens of each row are decoded with ``tokenizer``; a row stops
    when a stop string occurs in that text and ends inside the characters
    the latest token made visible (the token may run past the end of the
    stop string, as in transformers). A token that completes a multi-byte
    character makes that character visible, so the stop string may end
    there; text seen before, the prompt included, never stops a row again.
    Only the tokens needed to cover the longest stop string are decoded.
    """

    def __init__(self, tokenizer: Any, stop_strings: str | Sequence[str]) -> None:
        if tokenizer is None:
            raise GenerationError("stop_strings need the tokenizer to read the generated text; pass tokenizer= to generate().")
        self.tokenizer = tokenizer
        self.stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        # Counted in UTF-8 bytes: a byte-level tokenizer may spell one character with up to four tokens.
        self.window = 2 * max(len(s.encode("utf-8")) for s in self.stop_strings) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        done = [self._row_stops(row) for row in input_ids[:, -self.window :].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _row_stops(self, tokens: list[int]) -> bool:
        tokens, text = self._from_character_start(tokens)
        seen = self._seen_length(tokens, text)
        return any(_ends_after(text, stop, seen) for stop in self.stop_strings)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def _from_character_start(self, tokens: list[int]) -> tuple[list[int], str]:
        """The window without the leading tokens that hold the tail of a character it cut, and its text.

        Byte-fallback decoders replace a whole run of byte tokens when the run
        starts inside a character, which would hide every character after it.
        """
        text = self._decode(tokens)
        for _ in range(_MAX_CONTINUATION_BYTES):
            if len(tokens) < 2 or not text.startswith(_REPLACEMENT):
                break
            tokens = tokens[1:]
            text = self._decode(tokens)
        return tokens, text

    def _seen_length(self, tokens: list[int], text: str) -> int:
        """How many leading characters of ``text`` were already visible before the latest token."""
        before = self._decode(tokens[:-1])
        if text.startswith(before):
            return len(before)
        # The latest token completed a character whose first bytes showed as replacement characters
        # (a byte-fallback decoder replaces the whole run of byte tokens). Text up to the last earlier
        # token that ended on a character boundary was visible then.
        seen = _common_prefix_length(before, text)
        for end in range(len(tokens) - 2, max(len(tokens) - 2 - _MAX_CONTINUATION_BYTES, 0), -1):
            earlier = self._decode(tokens[:end])
            if text.startswith(earlier):
                return max(seen, len(earlier))
        return seen


def _common_prefix_length(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _ends_after(text: str, stop: str, start: int) -> bool:
    """Whether ``stop`` occurs in ``text`` ending after character ``start``."""
    begin = max(0, start - len(stop) + 1)
    return text.find(stop, begin) != -1


def build_stopping_criteria(
    config,
    *,
    max_length: int,
    tokenizer: Any = None,
    custom: Sequence[StoppingCriteria] | None = None,
) -> StoppingCriteriaList:
    """The criteria ``config`` asks for (length, time, stop strings, eos), with ``custom`` ones merged in."""
    built: list[StoppingCriteria] = [MaxLengthCriteria(max_length)]
    if config.max_time is not None:
        built.append(MaxTimeCriteria(config.max_time))
    if config.stop_strings is not None:
        built.append(StopStringCriteria(tokenizer, config.stop_strings))
    if config.eos_token_ids:
        built.append(EosTokenCriteria(config.eos_token_ids))
    criteria = StoppingCriteriaList()
    custom = list(custom or ())
    used = set()
    for criterion in built:
        replacement = next((c for c in custom if type(c) is type(criterion)), None)
        if replacement is not None:
            used.add(id(replacement))
        criteria.append(replacement if replacement is not None else criterion)
    criteria.extend(c for c in custom if id(c) not in used)
    return criteria


__all__ = [
    "EosTokenCriteria",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "StopStringCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "build_stopping_criteria",
]
