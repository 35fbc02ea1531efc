"""Green-list watermarking (Kirchenbauer et al., 2023, "A Watermark for Large Language Models").

Generation: before each token, the previous ``context_width`` tokens seed a
random permutation of the vocabulary; its first ``greenlist_ratio`` share
is the "green list", and ``bias`` is added to those tokens' logits
(:class:`WatermarkLogitsProcessor`, enabled by
``generate(watermarking_config=WatermarkingConfig(...))``).

Detection needs only the tokenizer's ids and the same settings: for each
scored token, rebuild its green list from the tokens before it and count
hits. Without a watermark about ``greenlist_ratio`` of the tokens are green;
the z-score ``(green - gamma * T) / sqrt(T * gamma * (1 - gamma))`` measures
the excess (:class:`WatermarkDetector`; z > 4 is strong evidence).

Seeding schemes: "lefthash" seeds with the previous tokens only;
"selfhash" also folds in the candidate token itself (a token is boosted
only when it is green under a seed that includes it), which makes the
watermark harder to remove by editing single tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bestiary.generation.config import WatermarkingConfig
from bestiary.generation.logits_process import LogitsProcessor

_SEED_MODULUS = 2**61 - 1
_SELFHASH_CANDIDATES = 40


def context_seed(hashing_key: int, context: list[int]) -> int:
    """A deterministic seed from the hashing key and the context token ids."""
    seed = hashing_key % _SEED_MODULUS
    for token in context:
        seed = (seed * 1_000_003 + int(token) + 1) % _SEED_MODULUS
    return seed


class GreenLists:
    """Green lists of a vocabulary under one watermark configuration (cached by seed)."""

    def __init__(self, vocab_size: int, config: WatermarkingConfig, device: torch.device | str = "cpu") -> None:
        self.vocab_size = vocab_size
        self.config = config
        self.device = torch.device(device)
        self.size = int(vocab_size * config.greenlist_ratio)
        self._generator = torch.Generator(device="cpu")
        self._cache: dict[int, torch.Tensor] = {}

    def for_seed(self, seed: int) -> torch.Tensor:
        """Boolean [vocab] mask of the green tokens for ``seed``."""
        mask = self._cache.get(seed)
        if mask is None:
            self._generator.manual_seed(seed)
            permutation = torch.randperm(self.vocab_size, generator=self._generator)
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[permutation[: self.size]] = True
            mask = mask.to(self.device)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[seed] = mask
        return mask

    def is_green(self, context: list[int], token: int) -> bool:
        """Whether ``token`` is green after ``context`` (the previous ``context_width`` tokens)."""
        if self.config.seeding_scheme == "selfhash":
            return bool(self.for_seed(context_seed(self.config.hashing_key, [*context, token]))[token])
        return bool(self.for_seed(context_seed(self.config.hashing_key, context))[token])


class WatermarkLogitsProcessor(LogitsProcessor):
    """Add ``bias`` to the green-list tokens of each row (see the module docstring)."""

    def __init__(self, vocab_size: int, config: WatermarkingConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.green = GreenLists(vocab_size, config, device)

    @classmethod
    def from_config(cls, config: WatermarkingConfig, vocab_size: int, device: torch.device | str) -> "WatermarkLogitsProcessor":
        """The processor for ``config`` over a vocabulary of ``vocab_size`` tokens."""
        return cls(vocab_size, config, device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        width = self.config.context_width
        if input_ids.shape[1] < width:
            return scores
        scores = scores.clone()
        contexts = input_ids[:, -width:].tolist()
        for row, context in enumerate(contexts):
            if self.config.seeding_scheme == "selfhash":
                top = torch.topk(scores[row], min(_SELFHASH_CANDIDATES, scores.shape[-1])).indices.tolist()
                boosted = [t for t in top if self.green.is_green(context, t)]
                scores[row, boosted] += self.config.bias
            else:
                mask = self.green.for_seed(context_seed(self.config.hashing_key, context))
                scores[row] = scores[row] + mask.to(scores.dtype) * self.config.bias
        return scores


@dataclass
class WatermarkDetection:
    """Detection result for one row."""

    num_tokens_scored: int
    num_green_tokens: int
    green_fraction: float
    z_score: float
    prediction: bool


class WatermarkDetector:
    """Score token sequences for the green-list watermark of ``config``.

    ``z_threshold`` (default 4.0) decides ``prediction``. Tokens are scored
    from ``prompt_length`` on (pass the prompt length to ignore the prompt).
    """

    def __init__(
        self, vocab_size: int, config: WatermarkingConfig | None = None, *, z_threshold: float = 4.0, device: str = "cpu"
    ) -> None:
        self.config = config or WatermarkingConfig()
        self.green = GreenLists(vocab_size, self.config, device)
        self.z_threshold = z_threshold

    def __call__(self, input_ids: torch.LongTensor, prompt_length: int = 0) -> list[WatermarkDetection]:
        """One :class:`WatermarkDetection` per row of ``input_ids`` [batch, length]."""
        width = self.config.context_width
        gamma = self.config.greenlist_ratio
        results = []
        for row in input_ids.tolist():
            start = max(prompt_length, width)
            scored = green = 0
            for position in range(start, len(row)):
                scored += 1
                green += self.green.is_green(row[position - width : position], row[position])
            if scored == 0:
                results.append(WatermarkDetection(0, 0, 0.0, 0.0, False))
                continue
            z = (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))
            results.append(WatermarkDetection(scored, green, green / scored, z, z > self.z_threshold))
        return results


__all__ = ["GreenLists", "WatermarkDetection", "WatermarkDetector", "WatermarkLogitsProcessor", "context_seed"]
