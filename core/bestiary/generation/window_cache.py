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
In a left-padded batch each row keeps its own sinks and window, as if it
were decoded alone.
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
    """StreamingLLM cache: each row's ``num_sink_tokens`` first tokens plus its most recent, ``window_length`` in all.

    ``inv_freq`` is the rotary embedding's inverse frequencies (one per pair
    of channels); keys that move left are re-rotated with them. Use
    :meth:`for_model` to take them from a model.

    Left-padded batches give each row the tokens it would get alone: padding
    is neither a sink nor counted in the window. Every layer stores
    [batch, kv_heads, columns, head_dim] with each row's kept tokens
    right-aligned; the columns to their left are the row's padding. Key
    positions are *virtual*: the columns are numbered so that they end at
    the current position. A row that has lost tokens fills every column, and
    in a row that has not, the columns to the left of its tokens land on its
    padding, so the padding mask hides exactly the columns a row does not own.
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
        self.reset()

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

    # -- per-row bookkeeping (CPU tensors of shape [batch]) ------------------------------
    def _rows_kept(self, layer_idx: int, rows: int) -> torch.Tensor:
        """Tokens each row keeps in this layer (padding excluded)."""
        if layer_idx < len(self._kept):
            return self._kept[layer_idx]
        return torch.zeros(rows, dtype=torch.long)

    def _rows_evicted(self, rows: int) -> torch.Tensor:
        """Tokens each row has lost so far (counted on layer 0)."""
        if self._evicted is None:
            self._evicted = torch.zeros(rows, dtype=torch.long)
        return self._evicted

    def _new_per_row(self, start: int, new: int, rows: int) -> torch.Tensor:
        """How many of the ``new`` tokens from position ``start`` are real in each row (all, unless told otherwise)."""
        if self._step is not None and self._step[0] == start and self._step[1].shape[0] == rows:
            return self._step[1]
        return torch.full((rows,), new, dtype=torch.long)

    def _keep_before(self, kept: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """How many tokens each row keeps when ``new`` more arrive (room is made first, sinks stay)."""
        room = (self.window_length - new).clamp(min=0)
        evicting = torch.maximum(room, kept.clamp(max=self.num_sink_tokens))
        return torch.where(kept + new <= self.window_length, kept, evicting)

    # -- positions -------------------------------------------------------------------------
    def rotary_positions(self, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each new token's slot among its row's kept tokens (``position_ids`` count each row's real tokens)."""
        rows, new = position_ids.shape
        real_new = self._count_real(attention_mask, self._seen, new, rows)
        self._step = (self._seen, real_new)
        kept = self._rows_kept(0, rows)
        evicted = self._rows_evicted(rows) + kept - self._keep_before(kept, real_new)
        return position_ids - evicted.to(position_ids.device)[:, None]

    @staticmethod
    def _count_real(attention_mask: torch.Tensor | None, start: int, new: int, rows: int) -> torch.Tensor:
        """How many of the tokens at ``start`` to ``start + new`` are not padding, per row."""
        if attention_mask is None:
            return torch.full((rows,), new, dtype=torch.long)
        first = max(start - 1, 0)  # one earlier column: the step before checked everything up to it
        window = attention_mask[:, first : start + new].cpu()
        if bool((window[:, 1:] < window[:, :-1]).any()):
            raise GenerationError(
                "The sink cache keeps each row's first tokens, so it supports left padding only; attention_mask has "
                "zeros after ones. Tokenize with padding_side='left' (or generate the rows one at a time)."
            )
        return window[:, start - first :].sum(-1).long()

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        new = cache_position.shape[0]
        if layer_idx >= len(self._keys):
            return cache_position
        start = int(cache_position[0])
        kept = self._kept[layer_idx]
        self._evict(layer_idx, self._keep_before(kept, self._new_per_row(start, new, kept.shape[0])))
        columns = self._keys[layer_idx].shape[2]
        return torch.arange(start - columns, start + new, device=cache_position.device)

    # -- storage -------------------------------------------------------------------------
    def _rotate(self, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Rotate each key column by its ``shift`` [batch, columns] positions (negative: to earlier positions)."""
        angles = shift.to(keys.device, torch.float32)[:, None, :, None] * self.inv_freq.to(keys.device)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(keys.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(keys.dtype)
        dim = cos.shape[-1]
        rotated, rest = keys[..., :dim], keys[..., dim:]
        half = dim // 2
        turned = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
        return torch.cat([rotated * cos + turned * sin, rest], dim=-1)

    def _evict(self, layer_idx: int, keep: torch.Tensor) -> None:
        """Keep each row's sinks and most recent tokens, ``keep[row]`` in all, re-rotating the recent ones."""
        kept = self._kept[layer_idx]
        if bool((keep >= kept).all()):
            return
        columns = self._keys[layer_idx].shape[2]
        width = int(keep.max())
        sinks = keep.clamp(max=self.num_sink_tokens)
        index = torch.arange(width)[None, :] - (width - keep)[:, None]  # rank among the row's kept tokens; < 0: padding
        is_sink = index < sinks[:, None]
        source = torch.where(is_sink, columns - kept[:, None] + index, columns - keep[:, None] + index).clamp(min=0)
        shift = torch.where(is_sink, 0, (keep - kept)[:, None])  # recent tokens move left by what the row lost
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        gather = source.to(keys.device)[:, None, :, None].expand(keys.shape[0], keys.shape[1], width, keys.shape[3])
        self._keys[layer_idx] = self._rotate(keys.gather(2, gather), shift)
        self._values[layer_idx] = values.gather(2, gather)
        if layer_idx == 0:
            self._evicted = self._rows_evicted(kept.shape[0]) + kept - keep
        self._kept[layer_idx] = keep

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        new = key.shape[2]
        start = self._seen if layer_idx == 0 else self._seen - new  # layer 0 counts the new tokens first
        real_new = self._new_per_row(start, new, key.shape[0])
        if layer_idx == len(self._keys):
            self._keys.append(key)
            self._values.append(value)
            self._kept.append(real_new.clone())
        elif layer_idx < len(self._keys):
            self._keys[layer_idx] = torch.cat([self._keys[layer_idx], key], dim=2)
            self._values[layer_idx] = torch.cat([self._values[layer_idx], value], dim=2)
            self._kept[layer_idx] = self._kept[layer_idx] + real_new
        else:
            raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
        if layer_idx == 0:
            self._seen += new
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        # a long prompt attends fully, then only the window is kept
        self._evict(layer_idx, self._kept[layer_idx].clamp(max=self.window_length))
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen

    def get_max_cache_shape(self) -> int | None:
        return self.window_length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def _select_rows(self, select: Any) -> None:
        """Apply a batch-dimension operation to the stored tensors and the per-row counts."""
        for buffers in (self._keys, self._values, self._kept):
            for i, stored in enumerate(buffers):
                buffers[i] = select(stored)
        if self._evicted is not None:
            self._evicted = select(self._evicted)
        self._step = None

    def reset(self) -> None:
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._kept: list[torch.Tensor] = []
        self._evicted: torch.Tensor | None = None
        # (start position, real tokens per row) of the step announced by rotary_positions
        self._step: tuple[int, torch.Tensor] | None = None
        self._seen = 0


__all__ = ["SinkCache", "SlidingWindowCache"]
