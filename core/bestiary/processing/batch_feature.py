"""``BatchFeature``: what image processors and feature extractors return.

A plain ``dict`` of model inputs (``pixel_values``, ``input_values``,
``attention_mask``, ...) with attribute access, conversion of per-example
lists into one stacked tensor or array, and ``.to(device / dtype)``.
torch is imported only when a conversion to torch is asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bestiary.errors import ProcessingError


_TENSOR_TYPES = ("pt", "np")


class BatchFeature(dict):
    """Model inputs by name; ``batch.pixel_values`` is ``batch["pixel_values"]``.

    ``tensor_type`` ("pt" or "np") stacks each value's per-example list into
    one tensor or array; None leaves the values as they are.
    """

    def __init__(self, data: dict[str, Any] | None = None, tensor_type: str | None = None) -> None:
        super().__init__(data or {})
        self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; it holds {sorted(self)}.") from None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state)

    def convert_to_tensors(self, tensor_type: str | None = None) -> "BatchFeature":
        """Stack every array-like value into one torch tensor ("pt") or numpy array ("np"); return self."""
        if tensor_type is None:
            return self
        tensor_type = str(getattr(tensor_type, "value", tensor_type))
        if tensor_type not in _TENSOR_TYPES:
            raise ProcessingError(f"return_tensors={tensor_type!r} is not supported; use 'pt', 'np' or None.")
        convert = _to_torch if tensor_type == "pt" else _to_numpy
        for key, value in list(self.items()):
            if not _is_array_like(value):
                continue
            try:
                self[key] = convert(value)
            except (ValueError, RuntimeError, TypeError) as exc:
                shapes = sorted({tuple(getattr(v, "shape", (len(v),))) for v in value}) if _is_sequence(value) else []
                hint = f" (shapes {shapes[:4]})" if len(shapes) > 1 else ""
                raise ProcessingError(
                    f"Cannot stack {key!r} into one {tensor_type} tensor{hint}: {exc}. Pad the batch "
                    "(padding=True / do_pad=True) or pass return_tensors=None to get a list."
                ) from None
        return self

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move torch tensors to a device and/or cast floating tensors to a dtype, like ``Tensor.to``.

        Integer tensors (masks, ids, sizes) keep their dtype. Returns self.
        """
        import torch

        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        non_blocking = kwargs.pop("non_blocking", False)
        if kwargs:
            raise ProcessingError(f"BatchFeature.to() got unexpected arguments {sorted(kwargs)}.")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise ProcessingError(f"BatchFeature.to() takes a device or a dtype, got {arg!r}.")
        for key, value in list(self.items()):
            if isinstance(value, torch.Tensor):
                target_dtype = dtype if dtype is not None and value.is_floating_point() else None
                self[key] = value.to(device=device, dtype=target_dtype, non_blocking=non_blocking)
        return self


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_array_like(value: Any) -> bool:
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("torch"):
        return True
    if not _is_sequence(value) or len(value) == 0:
        return False
    first = value[0]
    if isinstance(first, (bool, int, float, np.number, np.ndarray)):
        return True
    if type(first).__module__.startswith("torch"):
        return True
    return _is_sequence(first) and _is_array_like(first)


def _to_torch(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if _is_sequence(value) and isinstance(value[0], torch.Tensor):
        return torch.stack(list(value))
    if _is_sequence(value) and isinstance(value[0], np.ndarray):
        return torch.from_numpy(np.stack(value))
    return torch.tensor(value)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    if _is_sequence(value) and value and type(value[0]).__module__.startswith("torch"):
        return np.stack([v.detach().cpu().numpy() for v in value])
    if _is_sequence(value) and value and isinstance(value[0], np.ndarray):
        return np.stack(value)
    return np.asarray(value)
