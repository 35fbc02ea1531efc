"""Text generation: GenerationConfig, decoding strategies, caches, logits processors, streamers.

Public names are imported lazily, so ``import bestiary.generation`` stays
cheap (``GenerationConfig`` needs only pydantic).

Modules: ``config`` (GenerationConfig), ``mixin`` (GenerationMixin: generate,
generate_stream and the model hooks), ``prepare`` (argument handling),
``runner`` (feeding the model step by step), ``decoding`` (greedy and
sampling), ``beam_search``, ``contrastive``, ``dola``, ``assisted``
(draft-model, universal and prompt-lookup decoding), ``logits_process``,
``stopping``, ``watermark``, ``streamers``, ``outputs``, and the caches:
``cache`` (contract, DynamicCache, EncoderDecoderCache, create_cache),
``static_cache``, ``window_cache``, ``quantized_cache``, ``offloaded_cache``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GenerationConfig": "config",
    "GenerationMode": "config",
    "WatermarkingConfig": "config",
    "GenerationMixin": "mixin",
    "Cache": "cache",
    "DynamicCache": "cache",
    "EncoderDecoderCache": "cache",
    "create_cache": "cache",
    "StaticCache": "static_cache",
    "OffloadedStaticCache": "static_cache",
    "SlidingWindowCache": "window_cache",
    "SinkCache": "window_cache",
    "QuantizedCache": "quantized_cache",
    "OffloadedCache": "offloaded_cache",
    "LogitsProcessor": "logits_process",
    "LogitsProcessorList": "logits_process",
    "StoppingCriteria": "stopping",
    "StoppingCriteriaList": "stopping",
    "MaxLengthCriteria": "stopping",
    "MaxTimeCriteria": "stopping",
    "EosTokenCriteria": "stopping",
    "StopStringCriteria": "stopping",
    "BaseStreamer": "streamers",
    "TextStreamer": "streamers",
    "TextIteratorStreamer": "streamers",
    "AsyncTextIteratorStreamer": "streamers",
    "WatermarkDetector": "watermark",
    "WatermarkLogitsProcessor": "watermark",
    "GenerateDecoderOnlyOutput": "outputs",
    "GenerateBeamDecoderOnlyOutput": "outputs",
    "GenerateEncoderDecoderOutput": "outputs",
    "GenerateBeamEncoderDecoderOutput": "outputs",
    "GenerationStep": "outputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bestiary.generation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bestiary.generation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
