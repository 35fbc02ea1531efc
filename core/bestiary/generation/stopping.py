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


class StopStringCriteria(StoppingCriteria):
    """Stop a row when the text of its latest token completes one of ``stop_strings``.

    The last tokens of each row are decoded with ``tokenizer``; a row stops
    when a stop string occurs in that text and ends inside the latest
    token's characters (the token may run past the end of the stop string,
    as in transformers). Only the tokens needed to cover the longest stop
    string are decoded.
    """

    def __init__(self, tokenizer: Any, stop_strings: str | Sequence[str]) -> None:
        if tokenizer is None:
            raise GenerationError("stop_strings need the tokenizer to read the generated text; pass tokenizer= to generate().")
        self.tokenizer = tokenizer
        self.stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        self.window = 2 * max(len(s) for s in self.stop_strings) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None) -> torch.BoolTensor:
        done = []
        for row in input_ids[:, -self.window :].tolist():
            before = self.tokenizer.decode(row[:-1], skip_special_tokens=False)
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            if not text.startswith(before):  # a merge changed earlier characters: compare whole texts
                before = ""
            done.append(any(_ends_after(text, stop, len(before)) for stop in self.stop_strings))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
