"""One decoding step of a whole Llama-family decoder stack in a single native call.

A model describes its layers once as :class:`DecoderStackParts` (which modules
hold the norms and projections); :func:`native_decoder_step` then runs every
layer for one new token of one sequence in one call of the C kernel in
:mod:`.decoder_step_source`: RMSNorm, q/k/v, rotary, the cache write,
grouped-query attention, the output projection, the gated SiLU MLP and the
residual additions, with the projections read as float32 or packed GGUF
blocks (as :func:`~bestiary.nn.projection.project` reads them). Decoding a
small model this way costs one Python call per token instead of thousands of
tensor operations, which is most of a step on CPU.

It returns None, and the model runs its modules as usual, whenever the step is
not exactly that computation: more than one token or sequence, gradients,
training mode, hooks on any module involved (or global ones), attention
weights or hidden states requested, padding in the attention mask, a cache
that cannot hand out its storage (only :class:`~bestiary.generation.cache.DynamicCache`
and :class:`~bestiary.generation.static_cache.StaticCache` can), another dtype
or device, norms with different epsilons, or a partial rotary dimension.
``BESTIARY_NATIVE_MATVEC=0`` turns it off with the other native kernels.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bestiary.nn import kernels
from bestiary.nn.norms import RMSNorm
from bestiary.nn.projection import PARALLEL_MIN_WORK, _layer_tensors, _kind, quantized_activations
from bestiary.nn.thread_choice import ThreadChoice

__all__ = ["DecoderLayerParts", "DecoderStackParts", "native_decoder_step", "native_steps_between_graphs"]


@dataclass(frozen=True)
class DecoderLayerParts:
    """The modules of one pre-norm decoder layer (``x + o(attn(norm(x)))``, then ``x + down(silu(gate) * up)``)."""

    modules: tuple[nn.Module, ...]  # every module whose forward the native step stands in for (hooks are checked)
    input_norm: nn.Module
    post_norm: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    gate: nn.Module
    up: nn.Module
    down: nn.Module
    window: int | None = None  # sliding attention window of the layer, None for full attention


@dataclass(frozen=True)
class DecoderStackParts:
    """A decoder stack as :func:`native_decoder_step` reads it."""

    layers: tuple[DecoderLayerParts, ...]
    final_norm: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float


_global_hooks = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)


class _NativeStack:
    """The kernel's description of a stack, valid while its modules and tensors stay put."""

    def __init__(
        self, owner: nn.Module, parts: DecoderStackParts, tensors: list[tuple[dict, str, torch.Tensor]]
    ) -> None:
        self.parts = parts
        self.modules = _covered_modules(parts)
        # A submodule replaced anywhere in the owner's tree invalidates the description.
        self.children = [
            (module._modules, name, child) for module in owner.modules() for name, child in module._modules.items()
        ]
        self.watched = tensors
        # .to() or new storage through .data changes an address without replacing the tensor object.
        self.addresses = [(tensor, tensor.data_ptr()) for _, _, tensor in tensors]
        first = parts.layers[0]
        self.hidden = first.q.in_features
        self.intermediate = first.gate.out_features
        self.layers = (kernels.DecoderLayer * len(parts.layers))()
        self.model = kernels.DecoderModel(
            layers=len(parts.layers),
            hidden=self.hidden,
            heads=parts.num_heads,
            kv_heads=parts.num_kv_heads,
            head_dim=parts.head_dim,
            intermediate=self.intermediate,
            eps=parts.final_norm.variance_epsilon,
            scaling=parts.scaling,
            layer=self.layers,
            final_norm=parts.final_norm.weight.data_ptr(),
        )
        for slot, layer in zip(self.layers, parts.layers):
            slot.input_norm = layer.input_norm.weight.data_ptr()
            slot.post_norm = layer.post_norm.weight.data_ptr()
            for target, module in zip((*slot.qkv, slot.o, *slot.gate_up, slot.down), _projections(layer)):
                _describe(target, module)
            slot.window = layer.window or 0
        self.cache_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        # The layer descriptions point at one cache at a time: threads decoding with this model take turns
        # from binding their cache to the end of the kernel call (which releases the GIL).
        self.lock = threading.Lock()
        self.thread_choice = ThreadChoice()  # all threads, or one when the machine is busy (see thread_choice)
        work = self.hidden * self.intermediate * 3 * len(parts.layers)
        self.parallel = work >= PARALLEL_MIN_WORK

    def still_valid(self) -> bool:
        if not _runs_plainly(self.modules):
            return False
        for owner, name, child in self.children:
            if owner.get(name) is not child:
                return False
        for owner, key, tensor in self.watched:
            if owner.get(key) is not tensor:
                return False
        for tensor, address in self.addresses:
            if tensor.data_ptr() != address:
                return False
        return True

    def bind_cache(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Point the layers at the cache's storage; False when its layout does not fit."""
        if len(buffers) != len(self.layers):
            return False
        expected = (1, self.parts.num_kv_heads)
        for index, (keys, values) in enumerate(buffers):
            if index < len(self.cache_buffers) and self.cache_buffers[index][0] is keys and self.cache_buffers[index][1] is values:
                continue
            for stored in (keys, values):
                if (
                    stored.dtype is not torch.float32
                    or not stored.is_cpu
                    or not stored.is_contiguous()
                    or tuple(stored.shape[:2]) != expected
                    or stored.shape[3] != self.parts.head_dim
                ):
                    return False
            if keys.shape != values.shape:
                return False
            self.layers[index].keys, self.layers[index].values = keys.data_ptr(), values.data_ptr()
            self.layers[index].capacity = keys.shape[2]
        self.cache_buffers = list(buffers)
        return True


def _covered_modules(parts: DecoderStackParts) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
    """Every module whose forward the native step stands in for, and those of them that act differently in
    training mode (the layers' own modules: attention dropout; projections and norms do not)."""
    layer_modules = tuple(module for layer in parts.layers for module in layer.modules)
    others = tuple(module for layer in parts.layers for module in _projections(layer))
    return (*layer_modules, *others, parts.final_norm), layer_modules


def _runs_plainly(modules: tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]) -> bool:
    """No hooks to call and no training-mode behaviour to reproduce."""
    covered, trainable = modules
    for module in covered:
        if module._forward_hooks or module._forward_pre_hooks:
            return False
    for module in trainable:
        if module.training:
            return False
    return True


def _projections(layer: DecoderLayerParts) -> tuple[nn.Module, ...]:
    return (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)


def _describe(target: kernels.Matrix, module: nn.Module) -> None:
    values, scales, mins, bias = _layer_tensors(module, module.in_features)
    target.kind, target.rows = _kind(values[2], module), module.out_features
    target.values, target.scales, target.mins, target.bias = (
        None if entry[2] is None else entry[2].data_ptr() for entry in (values, scales, mins, bias)
    )


def _norm_tensor(norm: nn.Module, size: int) -> list[tuple[dict, str, torch.Tensor]] | None:
    weight = norm._parameters.get("weight") if type(norm) is RMSNorm else None
    if weight is None or weight.dtype is not torch.float32 or not weight.is_cpu or not weight.is_contiguous():
        return None
    return [(norm._parameters, "weight", weight)] if weight.shape == (size,) else None


def _build(owner: nn.Module, parts: DecoderStackParts) -> _NativeStack | None:
    """The native description of ``parts``, or None when some part is not what the kernel computes."""
    if not parts.layers or not _runs_plainly(_covered_modules(parts)):
        return None
    first = parts.layers[0]
    hidden, intermediate = first.q.in_features, first.gate.out_features
    heads, kv_heads, head_dim = parts.num_heads, parts.num_kv_heads, parts.head_dim
    if kv_heads <= 0 or heads % kv_heads or head_dim % 2:
        return None
    epsilons = {parts.final_norm.variance_epsilon}
    tensors = _norm_tensor(parts.final_norm, hidden)
    if tensors is None:
        return None
    shapes = {
        "q": (hidden, heads * head_dim),
        "k": (hidden, kv_heads * head_dim),
        "v": (hidden, kv_heads * head_dim),
        "o": (heads * head_dim, hidden),
        "gate": (hidden, intermediate),
        "up": (hidden, intermediate),
        "down": (intermediate, hidden),
    }
    for layer in parts.layers:
        for norm in (layer.input_norm, layer.post_norm):
            found = _norm_tensor(norm, hidden)
            if found is None:
                return None
            tensors.extend(found)
            epsilons.add(norm.variance_epsilon)
        for name, (in_features, out_features) in shapes.items():
            module = getattr(layer, name)
            if getattr(module, "in_features", None) != in_features or getattr(module, "out_features", None) != out_features:
                return None
            found = _layer_tensors(module, in_features)
            if found is None:
                return None
            tensors.extend(entry for entry in found if entry[2] is not None)
    if len(epsilons) != 1:
        return None
    return _NativeStack(owner, parts, tensors)


_stacks: "weakref.WeakKeyDictionary[nn.Module, _NativeStack | None]" = weakref.WeakKeyDictionary()


def _stack_for(owner: nn.Module, describe: Callable[[], DecoderStackParts | None]) -> _NativeStack | None:
    stack = _stacks.get(owner)
    if stack is not None and stack.still_valid():
        return stack
    parts = describe()
    stack = _build(owner, parts) if parts is not None else None
    _stacks[owner] = stack
    return stack


def native_decoder_step(
    owner: nn.Module,
    describe: Callable[[], DecoderStackParts | None],
    hidden_states: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: object,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Decode one token through the stack ``describe()`` returns for ``owner``; None where it does not apply.

    ``hidden_states`` [1, 1, hidden] are the new token's input embeddings and
    ``cos``/``sin`` [1, 1, head_dim] its rotary factors. The new keys and
    values are written into ``cache``; returns the final-normed hidden state
    [1, 1, hidden].
    """
    if hidden_states.shape[:2] != (1, 1) or hidden_states.dtype is not torch.float32 or not hidden_states.is_cpu:
        return None
    if torch.compiler.is_compiling():
        # A compiled decode step (static cache + compile_decode) may call the kernel between two graphs.
        # Dynamo guards on the global it reads here, so a graph traced without permission stays whole.
        if not _between_graphs_allowed or _step_between_graphs is None:
            return None
        return _step_between_graphs(owner, describe, hidden_states, cos, sin, cache, cache_position, attention_mask)
    return _step(owner, describe, hidden_states, cos, sin, cache, cache_position, attention_mask)


def _step(
    owner: nn.Module,
    describe: Callable[[], DecoderStackParts | None],
    hidden_states: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: object,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    if torch.is_grad_enabled() or any(_global_hooks):
        return None
    claim = getattr(cache, "claim_decode_slot", None)
    if claim is None or cos.shape[-1] * cos.shape[1] * cos.shape[0] != cos.numel():
        return None
    library = kernels.library()
    if library is None:
        return None
    stack = _stack_for(owner, describe)
    if stack is None or cos.shape[-1] != stack.parts.head_dim or cos.dtype is not torch.float32:
        return None
    if attention_mask is not None and (attention_mask.shape[0] != 1 or not bool(attention_mask.all())):
        return None  # padding: the kernel attends to every stored token
    claimed = claim(cache_position, len(stack.layers))
    if claimed is None:
        return None
    slot, buffers = claimed
    hidden = hidden_states.reshape(-1).clone()
    normed = torch.empty_like(hidden)
    cos, sin = cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous()
    with stack.lock:
        if not stack.bind_cache(buffers):
            raise RuntimeError(f"{type(cache).__name__} handed out storage the native decoder step cannot read")
        threads = stack.thread_choice.threads(torch.get_num_threads() if stack.parallel else 1)
        start = time.perf_counter()
        status = library.bd_decode(
            ctypes.byref(stack.model), hidden.data_ptr(), cos.data_ptr(), sin.data_ptr(), slot, normed.data_ptr(),
            threads, quantized_activations(),
        )
        stack.thread_choice.record(threads, time.perf_counter() - start)
    if status != 0:
        raise MemoryError("the native decoder step could not allocate its scratch memory")
    return normed.view(1, 1, -1)


_step_between_graphs: Callable[..., torch.Tensor | None] | None = None
_between_graphs_allowed = False


@contextmanager
def native_steps_between_graphs() -> Iterator[None]:
    """Let a decode step compiled and run inside this block call the native step (a graph break).

    ``torch.compile(..., fullgraph=True)`` steps must not enter it. The disabled
    wrapper is made on first use, not at import: ``torch.compiler.disable``
    imports dynamo (about 3 s and 150 MB).
    """
    global _step_between_graphs, _between_graphs_allowed
    if _step_between_graphs is None:
        _step_between_graphs = torch.compiler.disable(_step, reason="the native decoder step runs outside the graph")
    previous, _between_graphs_allowed = _between_graphs_allowed, True
    try:
        yield
    finally:
        _between_graphs_allowed = previous
