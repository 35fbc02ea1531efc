"""Caches that keep a bounded window of tokens: :class:`SlidingWindowCache` and :class:`SinkCache`.

Sliding window: a layer whose attention only sees the last ``W`` tokens
(Mistral, some Qwen2 layers) never needs older keys, so the cache drops
them. Results are identical to the dynamic cache for such layers; layers
with full attention keep everything.

Sink (StreamingLLM, Xiao et al. 2023): keep the first ``num_sink_tokens``
tokens ("attention sinks") and the most recent ones, ``window_length`` in
all, so a model can decode past its training length with bounded memory.
As in the paper, positions are those *within the cache*: a new token gets
the rotary position of its slot, and when older tokens are evicted the
remaining recent keys move left and are re-rotated by the number of slots
they moved (rotary embeddings compose, so ``R(p - e) = R(-e) R(p)``).
Attention masks still use absolute positions (for causality and padding).
"""

from __future__ import annotations

from typing import Any

import torch

from bestiary.errors import GenerationError
from bestiary.generation.cache import Cache

_GROWTH = 256


class SlidingWindowCache(Cache):
    """Keep at most ``window`` (+ a chunk of slack) tokens per windowed layer; other layers keep all.

    ``layer_windows[i]`` is the window of layer ``i`` (None: full attention).
    Storage is a contiguous buffer per layer; when it fills, the last
    ``window`` tokens move to the front, so a step never copies the window.
    """

    def __init__(self, window: int | None = None, layer_windows: list[int | None] | None = None) -> None:
        if window is None and layer_windows is None:
            raise GenerationError("SlidingWindowCache needs window= or layer_windows=.")
        if window is not None and window <= 0:
            raise GenerationError(f"The sliding window must be positive, got {window}.")
        self.window = window
        self.layer_windows = layer_windows
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._start: list[int] = []  # buffer index of the first kept token
        self._end: list[int] = []  # buffer index after the last token
        self._first: list[int] = []  # absolute position of the first kept token
        self._seen = 0

    @classmethod
    def for_model(cls, model: Any, window: int | None = None) -> "SlidingWindowCache":
        """A cache with ``model``'s per-layer windows (or one ``window`` for every layer)."""
        if window is not None:
            return cls(window=int(window))
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        window_of = getattr(config, "layer_sliding_window", None)
        if callable(window_of) and layers:
            windows = [window_of(i) for i in range(layers)]
        else:
            windows = [getattr(config, "sliding_window", None)] * (layers or 1)
        if all(w is None for w in windows):
            raise GenerationError(
                f"cache_implementation='sliding_window' but {type(model).__name__}'s config sets no sliding window; "
                "pass cache_config={'sliding_window': N} (this changes the model's attention) or use the dynamic cache."
            )
        return cls(layer_windows=windows)

    def _window(self, layer_idx: int) -> int | None:
        if self.layer_windows is not None:
            return self.layer_windows[layer_idx] if layer_idx < len(self.layer_windows) else self.window
        return self.window

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        first = self._first[layer_idx] if layer_idx < len(self._first) else 0
        kept = (self._end[layer_idx] - self._start[layer_idx]) if layer_idx < len(self._end) else 0
        return torch.arange(first, first + kept + cache_position.shape[0], device=cache_position.device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        new = key.shape[2]
        window = self._window(layer_idx)
        if layer_idx == len(self._keys):
            capacity = new + (window or 0) + _GROWTH
            self._keys.append(key.new_empty(*key.shape[:2], capacity, key.shape[3]))
            self._values.append(value.new_empty(*value.shape[:2], capacity, value.shape[3]))
            self._start.append(0)
            self._end.append(0)
            self._first.append(0)
        elif layer_idx > len(self._keys):
            raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
        start, end = self._start[layer_idx], self._end[layer_idx]
        if end + new > self._keys[layer_idx].shape[2]:
            start, end = self._compact(layer_idx, new, window)
        self._keys[layer_idx][:, :, end : end + new] = key
        self._values[layer_idx][:, :, end : end + new] = value
        end += new
        self._end[layer_idx] = end
        if layer_idx == 0:
            self._seen += new
        keys = self._keys[layer_idx][:, :, start:end]
        values = self._values[layer_idx][:, :, start:end]
        if window is not None and end - start > window:  # forget what no later query can see
            drop = end - start - window
            self._start[layer_idx] = start + drop
            self._first[layer_idx] += drop
        return keys, values

    def _compact(self, layer_idx: int, incoming: int, window: int | None) -> tuple[int, int]:
        """Move the kept tokens to the front of a (possibly larger) buffer; return the new (start, end)."""
        start, end = self._start[layer_idx], self._end[layer_idx]
        kept = end - start
        capacity = self._keys[layer_idx].shape[2]
        if window is None:
            capacity = max(2 * capacity, kept + incoming + _GROWTH)
        else:
            capacity = max(capacity, kept + incoming + _GROWTH)
        for buffers in (self._keys, self._values):
            old = buffers[layer_idx]
            grown = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            grown[:, :, :kept] = old[:, :, start:end]
            buffers[layer_idx] = grown
        self._start[layer_idx], self._end[layer_idx] = 0, kept
        return 0, kept

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen

    def get_max_cache_shape(self) -> int | None:
        windows = [self._window(i) for i in range(max(len(self._keys), 1))]
        return None if any(w is None for w in windows) else max(windows)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.index_select(0, beam_idx.to(stored.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.repeat_interleave(repeats, dim=0)

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self._seen + max_length
        for i in range(len(self._keys)):
            if max_length < self._first[i]:
                raise GenerationError(
                    f"Cannot roll the sliding-window cache back to {max_length} tokens: layer {i} already dropped "
                    f"tokens before position {self._first[i]}. Use the dynamic cache for assisted decoding."
                )
            self._end[i] = min(self._end[i], self._start[i] + (max_length - self._first[i]))
        self._seen = min(self._seen, max_length)

    def reset(self) -> None:
        self.__init__(self.window, self.layer_windows)


class SinkCache(Cache):
    """StreamingLLM cache: ``num_sink_tokens`` first tokens plus the most recent, ``window_length`` in all.

    ``inv_freq`` is the rotary embedding's inverse frequencies (one per pair
    of channels); keys that move left are re-rotated with them. Use
    :meth:`for_model` to take them from a model.
    """

    is_croppable = False

    def __init__(self, window_length: int, num_sink_tokens: int, inv_freq: torch.Tensor) -> None:
        if not 0 <= num_sink_tokens < window_length:
            raise GenerationError(
                f"num_sink_tokens ({num_sink_tokens}) must be >= 0 and smaller than window_length ({window_length})."
            )
        self.window_length = int(window_length)
        self.num_sink_tokens = int(num_sink_tokens)
        self.inv_freq = inv_freq.float()
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []  # absolute position of each kept token
        self._seen = 0
        self._pending_new = 0

    @classmethod
    def for_model(cls, model: Any, window_length: int, num_sink_tokens: int = 4) -> "SinkCache":
        """A sink cache using the rotary frequencies found in ``model``."""
        inv_freq = None
        for module in model.modules():
            candidate = getattr(module, "inv_freq", None)
            if isinstance(candidate, torch.Tensor):
                inv_freq = candidate
                break
        if inv_freq is None:
            raise GenerationError(f"The sink cache re-rotates keys, but {type(model).__name__} has no rotary embedding (inv_freq).")
        return cls(window_length, num_sink_tokens, inv_freq.detach().cpu())

    # -- positions ---------------------------------------------------------------
    def _kept(self) -> int:
        return self._positions[0].shape[0] if self._positions else 0

    def _kept_before(self, new: int) -> int:
        """How many cached tokens remain when ``new`` tokens arrive (eviction happens first)."""
        kept = self._kept()
        if kept + new <= self.window_length:
            return kept
        return max(self.window_length - new, min(kept, self.num_sink_tokens))

    def rotary_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        new = position_ids.shape[-1]
        start = self._kept_before(new)
        slots = torch.arange(start, start + new, device=position_ids.device)
        return slots.expand(position_ids.shape)

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        new = cache_position.shape[0]
        if layer_idx < len(self._keys):
            self._evict(layer_idx, self._kept_before(new))
            kept = self._positions[layer_idx].to(cache_position.device)
            return torch.cat([kept, cache_position])
        return cache_position

    # -- storage -----------------------------------------------------------------
    def _rotate(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Rotate keys by ``shift`` positions (negative moves them to earlier positions)."""
        angles = shift * self.inv_freq.to(keys.device)
        cos = torch.cat([angles.cos(), angles.cos()]).to(keys.dtype)
        sin = torch.cat([angles.sin(), angles.sin()]).to(keys.dtype)
        dim = cos.shape[0]
        rotated, rest = keys[..., :dim], keys[..., dim:]
        half = dim // 2
        turned = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
        return torch.cat([rotated * cos + turned * sin, rest], dim=-1)

    def _evict(self, layer_idx: int, keep: int) -> None:
        """Keep the sinks and the most recent tokens, ``keep`` in all, re-rotating the recent ones."""
        kept = self._positions[layer_idx].shape[0]
        if kept <= keep:
            return
        sinks = min(self.num_sink_tokens, keep)
        recent = keep - sinks
        moved = kept - keep  # slots the recent tokens move left
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        recent_keys = self._rotate(keys[:, :, kept - recent :], -moved) if recent else keys[:, :, :0]
        self._keys[layer_idx] = torch.cat([keys[:, :, :sinks], recent_keys], dim=2)
        self._values[layer_idx] = torch.cat([values[:, :, :sinks], values[:, :, kept - recent :]], dim=2)
        positions = self._positions[layer_idx]
        self._positions[layer_idx] = torch.cat([positions[:sinks], positions[kept - recent :]])

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        new = key.shape[2]
        start = self._seen if layer_idx == 0 else self._seen - new  # layer 0 counts the new tokens first
        if layer_idx == len(self._keys):
            self._keys.append(key)
            self._values.append(value)
            self._positions.append(torch.arange(start, start + new))
        elif layer_idx < len(self._keys):
            self._keys[layer_idx] = torch.cat([self._keys[layer_idx], key], dim=2)
            self._values[layer_idx] = torch.cat([self._values[layer_idx], value], dim=2)
            self._positions[layer_idx] = torch.cat([self._positions[layer_idx], torch.arange(start, start + new)])
        else:
            raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
        if layer_idx == 0:
            self._seen += new
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        self._evict(layer_idx, self.window_length)  # a long prompt attends fully, then only the window is kept
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen

    def get_max_cache_shape(self) -> int | None:
        return self.window_length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.index_select(0, beam_idx.to(stored.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        self._keys, self._values, self._positions, self._seen = [], [], [], 0


__all__ = ["SinkCache", "SlidingWindowCache"]
