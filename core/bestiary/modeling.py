"""``PreTrainedModel``: building, loading and saving models.

Loading builds the model with its parameters on the meta device (buffers are
real, so computed buffers such as rotary frequencies keep their values), then
reads each checkpoint tensor straight into its final dtype and device. Only
weights the checkpoint does not provide are initialised. Saving writes
transformers' format atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from bestiary.config import Config, atomic_write_text
from bestiary.errors import ConfigError, WeightShapeError
from bestiary.hub import HubOptions
from bestiary.safetensors_io import save_file
from bestiary.weights import SAFE_INDEX, SAFE_WEIGHTS, WeightSource, open_weights

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
_SHARD_PATTERN = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")


@dataclass
class LoadReport:
    """What happened to each checkpoint key while loading."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_unexpected_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A readable multi-line description of the report."""
        lines = []
        if self.missing_keys:
            lines.append(f"newly initialised (missing from the checkpoint): {', '.join(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"unused (not in the model): {', '.join(self.unexpected_keys)}")
        for name, found, expected in self.mismatched_keys:
            lines.append(f"re-initialised {name}: checkpoint shape {list(found)}, model shape {list(expected)}")
        return "\n".join(lines)

    def __getitem__(self, key: str) -> list:  # transformers returns loading info as a dict
        return getattr(self, key)


def resolve_dtype(dtype: str | torch.dtype | None, config: Config | None = None) -> torch.dtype:
    """Turn a dtype argument ("auto", a name, or a torch dtype) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.get_default_dtype()
    if dtype == "auto":
        stored = getattr(config, "dtype", None) if config is not None else None
        return _DTYPES.get(str(stored).replace("torch.", ""), torch.float32) if stored else torch.float32
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}; use 'auto', a torch dtype, or one of {sorted(set(_DTYPES))}.")
    return _DTYPES[name]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    if dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` registered inside the block on the meta device.

    Buffers stay real so that values computed in ``__init__`` survive. The
    temporary CPU tensor a layer allocates with ``torch.empty`` is never
    touched, so it costs no resident memory.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    # Layers initialise their parameters in __init__; on meta tensors that is wasted work (and the first
    # meta random op imports torch._dynamo, several seconds), so torch.nn.init does nothing meanwhile.
    saved_init = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    nn.Module.register_parameter = register_on_meta
    for name in saved_init:
        setattr(nn.init, name, _skip_init)
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for name, function in saved_init.items():
            setattr(nn.init, name, function)


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


def _skip_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


class PreTrainedModel(nn.Module):
    """Base class of every model: construction from configs, loading and saving."""

    config_class: ClassVar[type[Config]] = Config
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "input_ids"
    # target parameter -> source parameter, tied when the config says so.
    _tied_weights_keys: ClassVar[dict[str, str]] = {}
    # regexes of checkpoint keys that are expected to be unused (logged quietly).
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = []
    # regexes of model keys that may be missing from checkpoints (initialised quietly).
    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = []
    # (regex, replacement) applied to checkpoint keys, for legacy names.
    _checkpoint_key_renames: ClassVar[list[tuple[str, str]]] = []
    # module names whose parameters stay in float32 whatever dtype is asked for.
    _keep_in_fp32_modules: ClassVar[list[str]] = []

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise ConfigError(f"{type(self).__name__} needs a Config instance, got {type(config).__name__}.")
        self.config = config
        self.name_or_path = ""

    # -- construction -------------------------------------------------
    def post_init(self) -> None:
        """Initialise weights unless parameters are on the meta device (loading), then tie them."""
        first = next(self.parameters(), None)
        if first is not None and not first.is_meta:
            self.init_weights()
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the parameters of one module; families override this."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                module.weight.data.fill_(1.0)
            if module.bias is not None:
                module.bias.data.zero_()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter with the family's scheme."""
        self.apply(self._init_weights)

    @classmethod
    def from_config(cls, config: Config, *, dtype: str | torch.dtype | None = None, **overrides: Any) -> "PreTrainedModel":
        """Build a randomly initialised model from ``config``."""
        if overrides:
            config = config.model_copy(update=overrides)
        target = resolve_dtype(dtype if dtype is not None else torch.get_default_dtype(), config)
        with _default_dtype(target):
            model = cls(config)
        return model.to(target) if target != torch.get_default_dtype() else model

    # -- weights tying and access ----------------------------------------
    def _should_tie(self) -> bool:
        return bool(getattr(self.config.get_text_config(), "tie_word_embeddings", False))

    def _tied_pairs(self) -> dict[str, str]:
        if not self._should_tie():
            return {}
        return {target: source for target, source in self._tied_weights_keys.items() if _has_parameter(self, source)}

    def tie_weights(self) -> None:
        """Make each tied target parameter the same object as its source."""
        for target, source in self._tied_pairs().items():
            module_name, _, leaf = target.rpartition(".")
            setattr(self.get_submodule(module_name), leaf, self.get_parameter(source))

    def get_input_embeddings(self) -> nn.Module:
        """The token (or patch) embedding module."""
        base = getattr(self, self.base_model_prefix, self) if self.base_model_prefix else self
        if base is self:
            raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings().")
        return base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        """The output projection, when the model has one."""
        return None

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the first floating parameter."""
        for param in self.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Count parameters (tied parameters once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def set_attn_implementation(self, name: str) -> None:
        """Choose "sdpa" or "eager" attention in every attention module."""
        if name not in {"sdpa", "eager"}:
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}.")
        for module in self.modules():
            if hasattr(module, "attn_implementation"):
                module.attn_implementation = name

    # -- loading ------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        *,
        config: Config | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        subfolder: str = "",
        ignore_mismatched_sizes: bool = False,
        key_mapping: dict[str, str] | None = None,
        output_loading_info: bool = False,
        gguf_file: str | None = None,
        attn_implementation: str | None = None,
        use_safetensors: bool | None = None,
        torch_dtype: str | torch.dtype | None = None,
        device_map: str | torch.device | None = None,
        keep_quantized: bool = False,
        **config_overrides: Any,
    ) -> "PreTrainedModel":
        """Load a model from a local folder or a hub repo in transformers' format.

        Keyword arguments that are not loading options override config values.
        With ``gguf_file=`` and ``keep_quantized=True``, Q8_0/Q4_0/Q4_1 weights
        stay packed in memory and are computed with directly.
        Returns the model in eval mode (and a :class:`LoadReport` when
        ``output_loading_info`` is True).
        """
        options = HubOptions(revision, cache_dir, local_files_only, token, subfolder)
        if config is None:
            config_kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
            config_kwargs.update(token=token, subfolder=subfolder, gguf_file=gguf_file)
            config = cls.config_class.from_pretrained(path_or_repo, **config_kwargs, **config_overrides)
        elif config_overrides:
            config = config.model_copy(update=config_overrides)
        if torch_dtype is not None and dtype == "auto":
            dtype = torch_dtype
        if device is None and isinstance(device_map, (str, torch.device)) and device_map != "auto":
            device = device_map
        target_dtype = resolve_dtype(dtype, config)
        target_device = torch.device(device) if device is not None else torch.device("cpu")

        if gguf_file is not None:
            from bestiary.integrations.gguf.loading import open_gguf_weights

            source = open_gguf_weights(path_or_repo, gguf_file, options, config)
        else:
            source = open_weights(path_or_repo, options, use_safetensors)
        try:
            with _default_dtype(target_dtype), parameters_on_meta():
                model = cls(config)
            preloaded = source.prepare_model(model, keep_quantized) if hasattr(source, "prepare_model") else set()
            report = model._load_from_source(
                source, target_dtype, target_device, key_mapping, ignore_mismatched_sizes, preloaded
            )
        finally:
            source.close()
        model.name_or_path = str(path_or_repo)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        model._after_pretrained_load(path_or_repo, options)
        model.eval()
        return (model, report) if output_loading_info else model

    def _after_pretrained_load(self, path_or_repo: str | os.PathLike, options: HubOptions) -> None:
        """Hook for mixins (generation config loading); nothing by default."""

    @torch.no_grad()
    def _load_from_source(
        self,
        source: WeightSource,
        dtype: torch.dtype,
        device: torch.device,
        key_mapping: dict[str, str] | None,
        ignore_mismatched_sizes: bool,
        preloaded: set[str] = frozenset(),
    ) -> LoadReport:
        report = LoadReport()
        expected = {k: v for k, v in _expected_tensors(self).items() if k not in preloaded}
        tied_targets = set(self._tied_pairs())
        renamed = self._map_checkpoint_keys(source.keys(), set(expected), key_mapping)
        fp32_modules = tuple(self._keep_in_fp32_modules)
        loaded: set[str] = set()
        for checkpoint_key, model_key in renamed.items():
            if model_key is None or model_key in tied_targets:
                if model_key is None:
                    report.unexpected_keys.append(checkpoint_key)
                continue
            meta_tensor = expected[model_key]
            found_shape = tuple(source.shape(checkpoint_key))
            if found_shape != tuple(meta_tensor.shape):
                report.mismatched_keys.append((model_key, found_shape, tuple(meta_tensor.shape)))
                continue
            wanted = dtype
            if not meta_tensor.is_floating_point():
                wanted = None
            elif fp32_modules and any(part in model_key.split(".") for part in fp32_modules):
                wanted = torch.float32
            _set_tensor(self, model_key, source.read(checkpoint_key, wanted, device))
            loaded.add(model_key)
        if report.mismatched_keys and not ignore_mismatched_sizes:
            details = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in report.mismatched_keys)
            raise WeightShapeError(
                f"Shapes in {source.description} do not fit {type(self).__name__}: {details}. "
                "Fix the config, or pass ignore_mismatched_sizes=True to re-initialise those weights."
            )
        missing = [key for key in expected if key not in loaded and key not in tied_targets]
        self._initialise_missing(missing, dtype, device)
        self.tie_weights()
        self.to(device)
        _split_ignored(report, self._keys_to_ignore_on_load_unexpected)
        quiet_missing = [k for k in missing if _matches_any(k, self._keys_to_ignore_on_load_missing)]
        report.missing_keys = [k for k in missing if k not in quiet_missing and k not in _mismatched(report)]
        self._log_report(report, source.description)
        return report

    def _map_checkpoint_keys(
        self, keys: list[str], model_keys: set[str], key_mapping: dict[str, str] | None
    ) -> dict[str, str | None]:
        """Map each checkpoint key to a model key (None when the model has no such tensor)."""
        rules = [*self._checkpoint_key_renames, *(key_mapping or {}).items()]
        prefix = self.base_model_prefix
        has_prefix_module = bool(prefix) and hasattr(self, prefix)
        mapped: dict[str, str | None] = {}
        for key in keys:
            name = key
            for pattern, replacement in rules:
                name = re.sub(pattern, replacement, name)
            if name in model_keys:
                mapped[key] = name
            elif has_prefix_module and f"{prefix}.{name}" in model_keys:
                mapped[key] = f"{prefix}.{name}"
            elif prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in model_keys:
                mapped[key] = name[len(prefix) + 1 :]
            elif has_prefix_module and _swap_prefix(name, prefix) in model_keys:
                mapped[key] = _swap_prefix(name, prefix)
            else:
                mapped[key] = None
        return mapped

    def _initialise_missing(self, missing: list[str], dtype: torch.dtype, device: torch.device) -> None:
        if not missing:
            return
        by_module: dict[str, list[str]] = {}
        for key in missing:
            module_name, _, leaf = key.rpartition(".")
            if getattr(self.get_submodule(module_name), leaf).is_meta:  # real buffers keep their computed values
                by_module.setdefault(module_name, []).append(leaf)
        for module_name, leaves in by_module.items():
            module = self.get_submodule(module_name)
            for leaf in leaves:
                current = getattr(module, leaf)
                real = torch.empty(current.shape, dtype=dtype if current.is_floating_point() else current.dtype, device=device)
                _set_tensor(self, f"{module_name}.{leaf}" if module_name else leaf, real)
            # Initialise only the missing tensors: swap loaded ones out while _init_weights runs.
            kept = {
                name: param
                for name, param in list(module.named_parameters(recurse=False))
                if name not in leaves and not param.is_meta
            }
            for name, param in kept.items():
                module._parameters[name] = nn.Parameter(torch.empty_like(param), requires_grad=param.requires_grad)
            self._init_weights(module)
            for name, param in kept.items():
                module._parameters[name] = param

    def _log_report(self, report: LoadReport, description: str) -> None:
        name = type(self).__name__
        if report.missing_keys or report.unexpected_keys or report.mismatched_keys:
            logger.warning("Loading %s from %s:\n%s", name, description, report.summary())
        if report.ignored_unexpected_keys:
            logger.info("Loading %s: ignored checkpoint keys %s", name, report.ignored_unexpected_keys)

    # -- saving ------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True,
        gguf: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write config.json and the weights (sharded above ``max_shard_size``) in transformers' format.

        Each file is written to a temporary name and renamed, so a crash
        never leaves a half-written file under its real name.
        """
        if not safe_serialization:
            raise ValueError("bestiary writes only safetensors; pickle checkpoints are not produced.")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        if gguf is not None:
            from bestiary.integrations.gguf.export import save_model_as_gguf

            save_model_as_gguf(self, directory, gguf, **kwargs)
            return
        config = self.config.model_copy()
        config.architectures = [type(self).__name__]
        config.dtype = str(self.dtype).replace("torch.", "")
        config.save_pretrained(directory)
        generation_config = getattr(self, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(directory)
        tensors = self._state_dict_for_saving(state_dict)
        shards = _split_into_shards(tensors, _parse_size(max_shard_size))
        written = self._write_shards(directory, shards)
        _remove_stale_weight_files(directory, written)

    def _dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with kept-quantized layers expanded back to dense ``weight`` tensors."""
        state = self.state_dict()
        for name, module in self.named_modules():
            if hasattr(module, "dequantize_weight") and "qweight" in getattr(module, "_buffers", {}):
                prefix = f"{name}." if name else ""
                for key in ("qweight", "scales", "mins"):
                    state.pop(prefix + key, None)
                state[prefix + "weight"] = module.dequantize_weight(torch.float32)
        return state

    def _state_dict_for_saving(self, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        state = state_dict if state_dict is not None else self._dense_state_dict()
        tied_targets = set(self._tied_pairs())
        seen: dict[tuple, str] = {}
        tensors = {}
        for name, tensor in state.items():
            if name in tied_targets:
                continue
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            if tensor.numel() and identity in seen:
                logger.info("Not saving %s: it shares memory with %s.", name, seen[identity])
                continue
            seen[identity] = name
            tensors[name] = tensor
        return tensors

    def _write_shards(self, directory: Path, shards: list[dict[str, torch.Tensor]]) -> set[str]:
        if len(shards) == 1:
            save_file(shards[0], directory / SAFE_WEIGHTS)
            return {SAFE_WEIGHTS}
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        from tqdm.auto import tqdm

        for name, shard in tqdm(list(zip(names, shards)), desc="Saving shards", unit="file"):
            save_file(shard, directory / name)
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(directory / SAFE_INDEX, json.dumps(index, indent=2) + "\n")
        return {*names, SAFE_INDEX}


_BASE_PREFIX_ALIASES = ("model", "transformer")


def _swap_prefix(name: str, prefix: str) -> str:
    """Rename a checkpoint key saved under another historical base-model name ("transformer." vs "model.")."""
    first, _, rest = name.partition(".")
    return f"{prefix}.{rest}" if first in _BASE_PREFIX_ALIASES and first != prefix else name


def _has_parameter(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
    except AttributeError:
        return False
    return True


def _expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model saves (parameters and persistent buffers), without keeping duplicates apart."""
    return dict(model.state_dict(keep_vars=True))


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else True)
    elif leaf in module._buffers:
        module._buffers[leaf] = tensor
    else:
        raise KeyError(f"{name} is neither a parameter nor a buffer of {type(model).__name__}")


def _matches_any(key: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, key) for pattern in patterns)


def _split_ignored(report: LoadReport, patterns: list[str]) -> None:
    ignored = [key for key in report.unexpected_keys if _matches_any(key, patterns)]
    report.ignored_unexpected_keys = ignored
    report.unexpected_keys = [key for key in report.unexpected_keys if key not in ignored]


def _mismatched(report: LoadReport) -> set[str]:
    return {name for name, _, _ in report.mismatched_keys}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size must be an int or a string like '500MB' or '5GB', got {size!r}.")
    value, unit = float(match.group(1)), (match.group(2) or "B").upper()
    factors = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(value * factors[unit])


def _split_into_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    current = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and current + size > max_bytes:
            shards.append({})
            current = 0
        shards[-1][name] = tensor
        current += size
    return shards


def _remove_stale_weight_files(directory: Path, written: set[str]) -> None:
    for path in directory.iterdir():
        if _SHARD_PATTERN.match(path.name) and path.name not in written:
            path.unlink()
