"""``Config``: the validated, serialisable description of a model.

Configs are pydantic v2 models. They read and write transformers'
``config.json``: keys a config class does not declare are kept as extras and
written back unchanged, so a checkpoint survives a round trip through
bestiary untouched.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from bestiary.errors import ConfigError
from bestiary.hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Keys of transformers' base config that are about the library, not the model.
_DROPPED_ON_SAVE = {"_name_or_path", "_commit_hash", "_attn_implementation_autoset"}


class Config(BaseModel):
    """Base class of every model configuration.

    Subclasses set ``model_type`` and declare their fields with transformers'
    names and defaults. Undeclared keys are accepted and preserved.
    """

    model_config = ConfigDict(
        extra="allow",
        validate_assignment=True,
        protected_namespaces=(),
        arbitrary_types_allowed=True,
        populate_by_name=True,
    )

    model_type: ClassVar[str] = ""
    # Names of fields holding nested configs that are written with their own model_type.
    transformers_version: ClassVar[str] = "5.24.0"

    architectures: list[str] | None = None
    dtype: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    output_hidden_states: bool = False
    output_attentions: bool = False
    return_dict: bool = True
    is_encoder_decoder: bool = False

    @model_validator(mode="before")
    @classmethod
    def _normalise_legacy_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "torch_dtype" in data and data.get("dtype") is None:
            data["dtype"] = data.pop("torch_dtype")
        num_labels = data.pop("num_labels", None)
        if data.get("id2label") is None and num_labels is not None:
            data["id2label"] = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        data.pop("label2id", None)
        data.pop("model_type", None)
        return data

    # -- labels -------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Number of labels of classification heads (2 when no labels are set)."""
        return len(self.id2label) if self.id2label else 2

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(int(value))}

    @property
    def label2id(self) -> dict[str, int]:
        """Inverse of ``id2label``."""
        return {label: index for index, label in (self.id2label or {}).items()}

    # -- construction ----------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | os.PathLike | None = None, **overrides: Any) -> "Config":
        """Build a config from a dict (``config.json`` content), applying ``overrides``."""
        stored_type = data.get("model_type")
        if stored_type and cls.model_type and stored_type != cls.model_type:
            logger.warning(
                "%s has model_type %r but is loaded as %s (model_type %r).",
                source or "The config",
                stored_type,
                cls.__name__,
                cls.model_type,
            )
        merged = {**data, **overrides}
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(exc, cls, source)) from None

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "Config":
        """Load ``config.json`` from a folder, a file path or a hub repo id.

        Hub options (``revision``, ``cache_dir``, ``local_files_only``,
        ``token``, ``subfolder``) are accepted; other keyword arguments
        override values read from the file.
        """
        options = HubOptions.from_kwargs(kwargs)
        gguf_file = kwargs.pop("gguf_file", None)
        if gguf_file is not None:
            from bestiary.integrations.gguf.loading import config_dict_from_gguf

            data = config_dict_from_gguf(path_or_repo, gguf_file, options)
            return cls.from_dict(data, source=gguf_file, **kwargs)
        path = resolve_file(path_or_repo, CONFIG_NAME, options)
        data = read_config_file(path)
        return cls.from_dict(data, source=path, **kwargs)

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the config as transformers writes it (nested configs as dicts)."""
        data: dict[str, Any] = {}
        for name in type(self).model_fields:
            data[name] = _plain(getattr(self, name))
        for name, value in (self.__pydantic_extra__ or {}).items():
            if name not in _DROPPED_ON_SAVE:
                data[name] = _plain(value)
        if data.get("id2label") is not None:
            data["id2label"] = {str(k): v for k, v in data["id2label"].items()}
            data["label2id"] = {v: int(k) for k, v in data["id2label"].items()}
        if self.model_type:
            data["model_type"] = self.model_type
        data.setdefault("transformers_version", self.transformers_version)
        return dict(sorted(data.items()))

    def to_json_string(self) -> str:
        """Return the config as an indented JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` into ``save_directory`` atomically and return its path."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def get_text_config(self) -> "Config":
        """Return the config of the text decoder (self for text-only models)."""
        return self


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON config file, raising :class:`ConfigError` naming the file on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _describe_validation_error(exc: ValidationError, cls: type, source: str | os.PathLike | None) -> str:
    where = f" in {source}" if source else ""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        problems.append(f"field '{field}': {error['msg']} (got {error.get('input')!r})")
    return f"Invalid {cls.__name__}{where}: " + "; ".join(problems)
