"""Key/value caches for incremental decoding.

The contract a model relies on, per attention layer:

- ``key_positions(layer_idx, cache_position)``: before the update, the
  absolute position of every key slot that ``update`` will return (-1 for an
  empty slot). Attention masks are built from it.
- ``update(key, value, layer_idx)``: store the new keys/values
  ([batch, kv_heads, new_tokens, head_dim]) and return all keys/values the
  layer attends to.
- ``get_seq_length(layer_idx)``: how many tokens have been seen.

What ``generate()`` uses on top of it (all optional for a model):

- ``begin_step(cache_position)``: prepare a step ahead of a compiled forward
  (static caches record where the step writes; others ignore it).
- ``rotary_positions(position_ids, attention_mask)``: the positions rotary
  embeddings should use for the new tokens (the identity, except for
  :class:`SinkCache`, which places tokens by their slot in the cache and
  reads the padding mask to tell each row's real tokens from padding).
- ``crop(length)`` (assisted decoding rolls rejected draft tokens back),
  ``reorder_cache(beam_idx)`` (beam search), ``batch_repeat_interleave`` and
  ``batch_select_indices`` (contrastive search, several return sequences).

Caches in this package: :class:`DynamicCache` (the default, grows in chunks),
:class:`~bestiary.generation.static_cache.StaticCache` and
:class:`~bestiary.generation.static_cache.OffloadedStaticCache`
(preallocated, ``torch.compile``-friendly),
:class:`~bestiary.generation.window_cache.SlidingWindowCache` and
:class:`~bestiary.generation.window_cache.SinkCache` (bounded memory),
:class:`~bestiary.generation.quantized_cache.QuantizedCache` (int8/int4),
:class:`~bestiary.generation.offloaded_cache.OffloadedCache` and
:class:`EncoderDecoderCache` (self- plus cross-attention, for encoder-decoder
models). :func:`create_cache` builds one by name.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from bestiary.errors import GenerationError

_GROWTH = 256


class Cache:
    """Base class of key/value caches."""

    is_compileable: bool = False
    # True when layers hold different key layouts, so one mask cannot serve all layers.
    per_layer_positions: bool = False
    # False for caches that cannot forget tokens (assisted decoding needs crop()).
    is_croppable: bool = True
    # True after a beam search filled this cache: its rows are the last running beams, which need not be the
    # returned sequences, so generate() refuses to continue from it.
    holds_beams: bool = False

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values of one layer and return everything that layer attends to."""
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """How many tokens the cache has seen (for ``layer_idx``)."""
        raise NotImplementedError

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        """Absolute positions of the key slots ``update`` will return for this step."""
        total = self.get_seq_length(layer_idx) + cache_position.shape[0]
        return torch.arange(total, device=cache_position.device)

    def begin_step(self, cache_position: torch.Tensor) -> None:
        """Prepare a step whose new tokens sit at ``cache_position`` (needed before compiled forwards)."""

    def rotary_positions(self, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Positions the rotary embedding should give the new tokens (the identity by default).

        ``attention_mask`` is the step's [batch, length] padding mask over absolute positions (None: no padding).
        """
        return position_ids

    def claim_decode_slot(
        self, cache_position: torch.Tensor, num_layers: int
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """Hand one new token's storage to a kernel that writes it directly (:mod:`bestiary.nn.decoder_step`).

        Returns the slot the token's keys and values go to and, per layer, the
        key and value storage ([batch, kv_heads, capacity, head_dim]); the
        kernel attends over slots 0 to ``slot``. The token counts as stored
        from then on. None (the default) when this cache cannot be written that way.
        """
        return None

    def get_max_cache_shape(self) -> int | None:
        """Maximum number of tokens the cache holds, or None when unbounded."""
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch dimension (beam search)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reorder its batch (needed by beam search).")

    def crop(self, max_length: int) -> None:
        """Forget every token after the first ``max_length`` (assisted decoding rollback)."""
        raise NotImplementedError(f"{type(self).__name__} cannot forget tokens (needed by assisted decoding).")

    def reset(self) -> None:
        """Empty the cache."""
        raise NotImplementedError

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row ``repeats`` times."""
        raise NotImplementedError(f"{type(self).__name__} cannot expand its batch.")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows at ``indices``."""
        self.reorder_cache(indices)

    @property
    def seen_tokens(self) -> int:
        """How many tokens the cache has seen (transformers' older name)."""
        return self.get_seq_length()


class DynamicCache(Cache):
    """A cache that grows with the sequence.

    Storage grows in chunks, so each decoding step writes into preallocated
    memory instead of concatenating the whole history again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # accepts transformers' (config=...) and ignores it
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._lengths: list[int] = []
        self._positions: torch.Tensor | None = None  # 0, 1, 2... with room to grow
        self._positions_view: torch.Tensor | None = None  # the last key_positions answer

    def __len__(self) -> int:
        return len(self._keys)

    def _ensure_capacity(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor, needed: int) -> None:
        if layer_idx == len(self._keys):
            capacity = needed + _GROWTH
            self._keys.append(key.new_empty(*key.shape[:2], capacity, key.shape[3]))
            self._values.append(value.new_empty(*value.shape[:2], capacity, value.shape[3]))
            self._lengths.append(0)
            return
        stored = self._keys[layer_idx]
        if needed <= stored.shape[2]:
            return
        capacity = max(needed, 2 * stored.shape[2]) + _GROWTH
        length = self._lengths[layer_idx]
        for buffers in (self._keys, self._values):
            old = buffers[layer_idx]
            grown = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            grown[:, :, :length] = old[:, :, :length]
            buffers[layer_idx] = grown

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx > len(self._keys):
            raise IndexError(f"Cache layers must be filled in order; got layer {layer_idx} with {len(self._keys)} stored.")
        start = self._lengths[layer_idx] if layer_idx < len(self._keys) else 0
        new = key.shape[2]
        end = start + new
        self._ensure_capacity(layer_idx, key, value, end)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        keys.narrow(2, start, new).copy_(key)  # (narrow: cheaper than slice assignment, once per layer and token)
        values.narrow(2, start, new).copy_(value)
        self._lengths[layer_idx] = end
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def claim_decode_slot(
        self, cache_position: torch.Tensor, num_layers: int
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        lengths = self._lengths
        if len(lengths) != num_layers or cache_position.shape[0] != 1 or min(lengths) != max(lengths):
            return None  # before the prompt filled every layer, or after layers were written unevenly
        slot = lengths[0]
        if int(cache_position[0]) != slot:
            return None  # the module path masks by cache_position; the kernel attends to every stored token
        for layer_idx in range(num_layers):
            keys, values = self._keys[layer_idx], self._values[layer_idx]
            self._ensure_capacity(layer_idx, keys, values, slot + 1)
        self._lengths = [slot + 1] * num_layers
        return slot, list(zip(self._keys, self._values))

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        total = self.get_seq_length(layer_idx) + cache_position.shape[0]
        view = self._positions_view
        if view is not None and view.shape[0] == total and view.device == cache_position.device:
            return view  # every layer of a step asks for the same positions
        positions = self._positions
        if positions is None or positions.shape[0] < total or positions.device != cache_position.device:
            positions = torch.arange(total + _GROWTH, device=cache_position.device)
            self._positions = positions
        self._positions_view = positions[:total]
        return self._positions_view

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._lengths[layer_idx] if layer_idx < len(self._lengths) else 0

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored keys and values of one layer."""
        length = self._lengths[layer_idx]
        return self._keys[layer_idx][:, :, :length], self._values[layer_idx][:, :, :length]

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(layer_idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.layer(i) for i in range(len(self._keys)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.index_select(0, beam_idx.to(stored.device))

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        self._lengths = [min(length, max_length) for length in self._lengths]

    def reset(self) -> None:
        self._keys, self._values, self._lengths = [], [], []

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row ``repeats`` times (expanding a prompt cache for several return sequences)."""
        for buffers in (self._keys, self._values):
            for i, stored in enumerate(buffers):
                buffers[i] = stored.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows at ``indices``."""
        self.reorder_cache(indices)

    @classmethod
    def from_legacy_cache(cls, past: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> "DynamicCache":
        """Build a cache from a tuple of (key, value) per layer."""
        cache = cls()
        for layer_idx, (key, value) in enumerate(past):
            cache.update(key, value, layer_idx)
        return cache

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Return a tuple of (key, value) per layer."""
        return tuple(self.layer(i) for i in range(len(self._keys)))


class EncoderDecoderCache(Cache):
    """Two caches for an encoder-decoder model: decoder self-attention and cross-attention.

    The cache contract (``key_positions``, ``update``, ``get_seq_length``,
    ``crop``) applies to the self-attention cache, so a decoder can use this
    object wherever it takes a cache. Cross-attention keys/values depend only
    on the encoder output: a decoder layer computes them on the first step and
    reads them back afterwards through :meth:`cross_attention`::

        key, value = cache.cross_attention(layer_idx, lambda: (k_proj(enc), v_proj(enc)))

    Beam search and contrastive search reorder and expand both caches.
    """

    def __init__(self, self_attention_cache: Cache | None = None, cross_attention_cache: Cache | None = None) -> None:
        self.self_attention_cache = self_attention_cache if self_attention_cache is not None else DynamicCache()
        self.cross_attention_cache = cross_attention_cache if cross_attention_cache is not None else DynamicCache()
        self.is_updated: dict[int, bool] = {}
        self.is_compileable = self.self_attention_cache.is_compileable
        self.per_layer_positions = self.self_attention_cache.per_layer_positions
        self.is_croppable = self.self_attention_cache.is_croppable

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.self_attention_cache.update(key, value, layer_idx)

    def key_positions(self, layer_idx: int, cache_position: torch.Tensor) -> torch.Tensor:
        return self.self_attention_cache.key_positions(layer_idx, cache_position)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer_idx)

    def begin_step(self, cache_position: torch.Tensor) -> None:
        self.self_attention_cache.begin_step(cache_position)

    def rotary_positions(self, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.self_attention_cache.rotary_positions(position_ids, attention_mask)

    def get_max_cache_shape(self) -> int | None:
        return self.self_attention_cache.get_max_cache_shape()

    def cross_attention(
        self, layer_idx: int, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of a layer: ``compute()`` them once, then reuse the stored ones."""
        if not self.is_updated.get(layer_idx, False):
            key, value = compute()
            self.cross_attention_cache.update(key, value, layer_idx)
            self.is_updated[layer_idx] = True
            return key, value
        return self.cross_attention_cache.layer(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)
        self.cross_attention_cache.reorder_cache(beam_idx)

    def crop(self, max_length: int) -> None:
        self.self_attention_cache.crop(max_length)

    def reset(self) -> None:
        self.self_attention_cache.reset()
        self.cross_attention_cache.reset()
        self.is_updated = {}

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.self_attention_cache.batch_repeat_interleave(repeats)
        self.cross_attention_cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.self_attention_cache.batch_select_indices(indices)
        self.cross_attention_cache.batch_select_indices(indices)


def create_cache(
    implementation: str | None,
    *,
    model: Any = None,
    max_cache_len: int | None = None,
    options: dict[str, Any] | None = None,
) -> Cache:
    """Build the cache named ``implementation`` ("dynamic" when None) for ``model``.

    ``options`` (``cache_config`` of the generation config) passes
    cache-specific settings: ``window_length``/``num_sink_tokens`` (sink),
    ``nbits``/``residual_length``/``q_group_size`` (quantized),
    ``sliding_window`` (sliding_window), ``offload_device`` (offloaded).
    """
    options = dict(options or {})
    name = implementation or "dynamic"
    config = getattr(model, "config", None)
    if name == "dynamic":
        return DynamicCache()
    if name in ("static", "offloaded_static"):
        from bestiary.generation.static_cache import OffloadedStaticCache, StaticCache

        if max_cache_len is None:
            raise GenerationError("A static cache needs max_cache_len (the longest sequence it must hold).")
        if name == "static":
            return StaticCache(max_cache_len)
        return OffloadedStaticCache(max_cache_len, offload_device=options.get("offload_device", "cpu"))
    if name == "offloaded":
        from bestiary.generation.offloaded_cache import OffloadedCache

        return OffloadedCache(offload_device=options.get("offload_device", "cpu"))
    if name == "sliding_window":
        from bestiary.generation.window_cache import SlidingWindowCache

        return SlidingWindowCache.for_model(model, window=options.get("sliding_window"))
    if name == "sink":
        from bestiary.generation.window_cache import SinkCache

        unknown = set(options) - {"window_length", "num_sink_tokens"}
        if unknown or "window_length" not in options:
            raise GenerationError(
                "cache_implementation='sink' needs cache_config={'window_length': N, 'num_sink_tokens': S}"
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        return SinkCache.for_model(model, options["window_length"], options.get("num_sink_tokens", 4))
    if name == "quantized":
        from bestiary.generation.quantized_cache import QuantizedCache

        allowed = {"nbits", "residual_length", "q_group_size", "backend"}
        unknown = set(options) - allowed
        if unknown:
            raise GenerationError(f"cache_config has unknown keys {sorted(unknown)} for the quantized cache; allowed: {sorted(allowed)}")
        options.pop("backend", None)
        return QuantizedCache(**options)
    raise GenerationError(f"Unknown cache_implementation {implementation!r} for {type(model).__name__ if model else 'the model'}.")


__all__ = ["Cache", "DynamicCache", "EncoderDecoderCache", "create_cache"]
