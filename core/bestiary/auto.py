"""The ``Auto*`` classes: pick the right class from a checkpoint and load it.

Every ``AutoModelFor*`` class is generated from the task table in
:mod:`bestiary.tasks`; each resolves ``model_type`` (and the config's
``architectures``) through the plugin registry.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any, ClassVar

from bestiary.config import CONFIG_NAME, Config, read_config_file
from bestiary.errors import ConfigError, NotRegisteredError
from bestiary.hub import HubOptions, resolve_file
from bestiary.registry import ArchitectureSpec, get_registry
from bestiary.tasks import TASKS

logger = logging.getLogger(__name__)

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
MODEL_LOADING_KEYS = (
    "dtype",
    "torch_dtype",
    "device",
    "device_map",
    "ignore_mismatched_sizes",
    "key_mapping",
    "output_loading_info",
    "attn_implementation",
    "use_safetensors",
    "keep_quantized",
)
_runtime_ids = itertools.count()


def _pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs.pop(key) for key in HUB_KEYS if key in kwargs}


def _refuse_remote_code(kwargs: dict[str, Any]) -> None:
    if kwargs.pop("trust_remote_code", None):
        logger.warning("trust_remote_code is ignored: bestiary never executes code from a checkpoint.")


def _runtime_reference(obj: Any) -> str:
    """A unique, well-formed reference for an object registered at run time."""
    return f"bestiary_runtime.r{next(_runtime_ids)}:{obj.__name__}"


def _current_spec(model_type: str) -> ArchitectureSpec | None:
    try:
        return get_registry().architecture(model_type).spec
    except NotRegisteredError:
        return None


def _register_runtime(model_type: str, objects: dict[str, Any], **fields: Any) -> None:
    """Add ``fields`` to the spec of ``model_type`` as a runtime registration."""
    base = _current_spec(model_type)
    data = base.model_dump() if base is not None else {"model_type": model_type}
    models = dict(data.get("models") or {})
    models.update(fields.pop("models", {}))
    data.update(fields, models=models, override=False)
    if "config" not in data:
        raise NotRegisteredError(
            f"Register a config class for {model_type!r} first: AutoConfig.register({model_type!r}, YourConfig)."
        )
    get_registry().register_architecture(ArchitectureSpec(**data), objects)


def _model_type_of(config_data: dict[str, Any], source: Any) -> str:
    model_type = config_data.get("model_type")
    if not model_type:
        hint = ""
        if config_data.get("auto_map"):
            hint = " It declares custom code (auto_map), which bestiary never executes."
        raise ConfigError(f"{source} has no 'model_type' key, so no architecture can be chosen for it.{hint}")
    return model_type


class AutoConfig:
    """Load the config class registered for a checkpoint's ``model_type``."""

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> Config:
        """Read ``config.json`` (or GGUF metadata) and build the registered config class."""
        _refuse_remote_code(kwargs)
        gguf_file = kwargs.pop("gguf_file", None)
        hub = _pop_hub_kwargs(kwargs)
        if gguf_file is not None:
            from bestiary.integrations.gguf.loading import gguf_model_type

            model_type = gguf_model_type(path_or_repo, gguf_file, HubOptions(**hub))
            config_class = config_class_for(model_type)
            return config_class.from_pretrained(path_or_repo, gguf_file=gguf_file, **hub, **kwargs)
        path = resolve_file(path_or_repo, CONFIG_NAME, HubOptions(**hub))
        data = read_config_file(path)
        config_class = config_class_for(_model_type_of(data, path))
        return config_class.from_dict(data, source=path, **kwargs)

    @classmethod
    def for_model(cls, model_type: str, **kwargs: Any) -> Config:
        """Build the config of ``model_type`` from keyword arguments."""
        return config_class_for(model_type).from_dict(kwargs)

    @classmethod
    def register(cls, model_type: str, config_class: type[Config], exist_ok: bool = False) -> None:
        """Register ``config_class`` for ``model_type`` (for configs defined in scripts)."""
        if config_class.model_type and config_class.model_type != model_type:
            raise ConfigError(
                f"{config_class.__name__}.model_type is {config_class.model_type!r}, not {model_type!r}; "
                "they must agree."
            )
        existing = _current_spec(model_type)
        if existing is not None and not exist_ok:
            current = get_registry().resolve(existing.config)
            if current is not config_class:
                raise ConfigError(
                    f"model_type {model_type!r} is already registered with {current.__name__}; "
                    "pass exist_ok=True to replace it."
                )
        reference = _runtime_reference(config_class)
        _register_runtime(model_type, {reference: config_class}, config=reference)


def config_class_for(model_type: str) -> type[Config]:
    """Return the config class registered for ``model_type``."""
    registry = get_registry()
    return registry.resolve(registry.architecture(model_type).spec.config)


class _AutoModelBase:
    """Shared behaviour of the generated ``AutoModelFor*`` classes."""

    task: ClassVar[str] = "model"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} cannot be instantiated; use from_pretrained() or from_config().")

    @classmethod
    def model_class_for(cls, config: Config) -> type:
        """The model class serving this Auto class's task for ``config``."""
        registry = get_registry()
        reference = registry.model_reference(config.model_type, cls.task, config.architectures)
        return registry.resolve(reference)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, *, config: Config | None = None, **kwargs: Any):
        """Load the checkpoint with the class registered for its ``model_type`` and this task."""
        _refuse_remote_code(kwargs)
        hub = {key: kwargs[key] for key in HUB_KEYS if key in kwargs}
        if config is None:
            loading = {key: kwargs.pop(key) for key in MODEL_LOADING_KEYS if key in kwargs}
            gguf = {"gguf_file": kwargs.pop("gguf_file")} if "gguf_file" in kwargs else {}
            for key in HUB_KEYS:
                kwargs.pop(key, None)
            config = AutoConfig.from_pretrained(path_or_repo, **hub, **gguf, **kwargs)
            kwargs = {**loading, **hub, **gguf}
        model_class = cls.model_class_for(config)
        return model_class.from_pretrained(path_or_repo, config=config, **kwargs)

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any):
        """Build a randomly initialised model of the registered class for ``config``."""
        return cls.model_class_for(config).from_config(config, **kwargs)

    @classmethod
    def register(cls, config_class: type[Config], model_class: type, exist_ok: bool = False) -> None:
        """Register ``model_class`` as this task's class for ``config_class.model_type``."""
        model_type = config_class.model_type
        if not model_type:
            raise ConfigError(f"{config_class.__name__} has no model_type; set model_type: ClassVar[str].")
        if _current_spec(model_type) is None:
            AutoConfig.register(model_type, config_class)
        spec = _current_spec(model_type)
        if spec is not None and cls.task in spec.models and not exist_ok:
            current = get_registry().resolve(spec.models[cls.task][0])
            if current is not model_class:
                raise ConfigError(
                    f"{cls.__name__} already maps {model_type!r} to {current.__name__}; pass exist_ok=True to replace it."
                )
        reference = _runtime_reference(model_class)
        _register_runtime(model_type, {reference: model_class}, models={cls.task: (reference,)})


def _make_auto_model_class(task_name: str, class_name: str) -> type:
    doc = f"Auto class for the {task_name!r} task: ``{class_name}.from_pretrained(path_or_repo)``."
    return type(class_name, (_AutoModelBase,), {"task": task_name, "__doc__": doc, "__module__": __name__})


AUTO_MODEL_CLASSES: dict[str, type] = {task.auto_class: _make_auto_model_class(task.name, task.auto_class) for task in TASKS}
globals().update(AUTO_MODEL_CLASSES)
AutoModel = AUTO_MODEL_CLASSES["AutoModel"]
AutoModelForCausalLM = AUTO_MODEL_CLASSES["AutoModelForCausalLM"]
AutoBackbone = AUTO_MODEL_CLASSES["AutoBackbone"]


# -- processors ----------------------------------------------------------------
def _read_optional_json(path_or_repo: str | os.PathLike, filename: str, options: HubOptions) -> dict[str, Any]:
    path = resolve_file(path_or_repo, filename, options, required=False)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _processor_class(
    kind: str, path_or_repo: str | os.PathLike, options: HubOptions, declared_type: str | None, default: str | None
) -> type | None:
    """Find the processor class of ``kind`` for a checkpoint.

    Order: the spec of the checkpoint's ``model_type``; then a registered
    class whose name matches the type named in the processor's own file;
    then ``default``.
    """
    registry = get_registry()
    config_data = _read_optional_json(path_or_repo, CONFIG_NAME, options)
    model_type = config_data.get("model_type")
    if model_type:
        try:
            reference = registry.processor_reference(model_type, kind)
        except NotRegisteredError:
            reference = None
        if reference:
            return registry.resolve(reference)
    if declared_type:
        wanted = {declared_type, declared_type.removesuffix("Fast")}
        for row in registry.list_architectures():
            reference = row["processors"].get(kind)
            if reference and reference.rpartition(":")[2] in wanted:
                return registry.resolve(reference)
            if reference:
                candidate = registry.resolve(reference)
                if wanted & set(getattr(candidate, "transformers_names", ())):
                    return candidate
    return registry.resolve(default) if default else None


class _AutoProcessorBase:
    kind: ClassVar[str] = ""
    file_name: ClassVar[str] = ""
    type_key: ClassVar[str] = ""
    default: ClassVar[str | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} cannot be instantiated; use from_pretrained().")

    @classmethod
    def class_for(cls, path_or_repo: str | os.PathLike, options: HubOptions) -> type:
        declared = _read_optional_json(path_or_repo, cls.file_name, options).get(cls.type_key) if cls.file_name else None
        found = _processor_class(cls.kind, path_or_repo, options, declared, cls.default)
        if found is None:
            raise NotRegisteredError(
                f"No {cls.kind.replace('_', ' ')} is registered for {path_or_repo} "
                f"(declared type: {declared!r}). Install the plugin of this architecture."
            )
        return found

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any):
        """Load the registered processor class for this checkpoint."""
        _refuse_remote_code(kwargs)
        options = HubOptions(**{key: kwargs[key] for key in HUB_KEYS if key in kwargs})
        return cls.class_for(path_or_repo, options).from_pretrained(path_or_repo, **kwargs)

    @classmethod
    def register(cls, config_class: type[Config], processor_class: type, exist_ok: bool = False) -> None:
        """Register ``processor_class`` for ``config_class.model_type``."""
        model_type = config_class.model_type
        if _current_spec(model_type) is None:
            AutoConfig.register(model_type, config_class)
        reference = _runtime_reference(processor_class)
        _register_runtime(model_type, {reference: processor_class}, **{cls.kind: reference})


class AutoTokenizer(_AutoProcessorBase):
    """Load the tokenizer of a checkpoint (the core ``Tokenizer`` unless a plugin registers another)."""

    kind = "tokenizer"
    file_name = "tokenizer_config.json"
    type_key = "tokenizer_class"
    default = "bestiary.processing.tokenization:Tokenizer"

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any):
        """Load the tokenizer from tokenizer files or, with ``gguf_file=``, from GGUF metadata."""
        if kwargs.get("gguf_file") is not None:
            from bestiary.integrations.gguf.loading import tokenizer_from_gguf

            return tokenizer_from_gguf(path_or_repo, kwargs.pop("gguf_file"), HubOptions.from_kwargs(kwargs))
        return super().from_pretrained(path_or_repo, **kwargs)


class AutoImageProcessor(_AutoProcessorBase):
    """Load the image processor of a checkpoint."""

    kind = "image_processor"
    file_name = "preprocessor_config.json"
    type_key = "image_processor_type"
    default = "bestiary.processing.image_processing:ImageProcessor"


class AutoFeatureExtractor(_AutoProcessorBase):
    """Load the audio feature extractor of a checkpoint."""

    kind = "feature_extractor"
    file_name = "preprocessor_config.json"
    type_key = "feature_extractor_type"
    default = None


class AutoProcessor(_AutoProcessorBase):
    """Load the multimodal processor of a checkpoint, else its tokenizer, image processor or feature extractor."""

    kind = "processor"
    file_name = "processor_config.json"
    type_key = "processor_class"

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any):
        """Load the most complete processor available for the checkpoint."""
        _refuse_remote_code(kwargs)
        options = HubOptions(**{key: kwargs[key] for key in HUB_KEYS if key in kwargs})
        declared = _read_optional_json(path_or_repo, cls.file_name, options).get(cls.type_key)
        found = _processor_class("processor", path_or_repo, options, declared, None)
        if found is not None:
            return found.from_pretrained(path_or_repo, **kwargs)
        for fallback in (AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor):
            if resolve_file(path_or_repo, fallback.file_name, options, required=False) or fallback is AutoTokenizer:
                try:
                    return fallback.from_pretrained(path_or_repo, **kwargs)
                except (NotRegisteredError, OSError):
                    continue
        raise NotRegisteredError(f"No processor, tokenizer, image processor or feature extractor found for {path_or_repo}.")


__all__ = [
    "AutoConfig",
    "AutoTokenizer",
    "AutoImageProcessor",
    "AutoFeatureExtractor",
    "AutoProcessor",
    *AUTO_MODEL_CLASSES,
    "config_class_for",
]
