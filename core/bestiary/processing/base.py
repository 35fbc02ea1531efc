"""``Preprocessor``: settings saved as ``preprocessor_config.json``.

Image processors and audio feature extractors share one on-disk format with
transformers: a flat JSON object of settings plus a type key
(``image_processor_type`` or ``feature_extractor_type``) naming the
transformers class that reads it. This module holds what they share: loading
from a folder, file or hub repo, validation that names the field and the
file, saving atomically, and keeping keys bestiary does not know so that a
file survives a round trip unchanged.

Settings are pydantic v2 fields declared on the subclass; keys a subclass
does not declare are kept as pydantic extras.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from bestiary.errors import HubError, ProcessingError
from bestiary.files import atomic_path
from bestiary.hub import HubOptions, resolve_file

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
PROCESSOR_CONFIG_NAME = "processor_config.json"

# Keyword arguments transformers' loaders accept that mean nothing here.
_IGNORED_LOAD_KWARGS = frozenset(
    {"force_download", "proxies", "trust_remote_code", "use_fast", "backend", "_from_auto", "_from_pipeline"}
)

P = TypeVar("P", bound="Preprocessor")


class Preprocessor(BaseModel):
    """Base of image processors and feature extractors stored in ``preprocessor_config.json``.

    A subclass declares its settings as pydantic fields with transformers'
    names and defaults, and sets these class variables:

    - ``type_key``: ``"image_processor_type"`` or ``"feature_extractor_type"``.
    - ``processor_key``: the key holding these settings inside a combined
      ``processor_config.json`` (``"image_processor"`` / ``"feature_extractor"``).
    - ``transformers_class``: the transformers class that reads what this class
      writes (for example ``"SamImageProcessor"``). When None, the type found
      in the loaded file is written back, else ``default_transformers_class``.
    """

    model_config = ConfigDict(
        extra="allow",
        validate_assignment=True,
        protected_namespaces=(),
        arbitrary_types_allowed=True,
    )

    config_filename: ClassVar[str] = PREPROCESSOR_CONFIG_NAME
    type_key: ClassVar[str] = ""
    legacy_type_keys: ClassVar[tuple[str, ...]] = ()
    processor_key: ClassVar[str] = ""
    transformers_class: ClassVar[str | None] = None
    default_transformers_class: ClassVar[str] = ""

    _source: str | None = PrivateAttr(default=None)
    _loaded_type: str | None = PrivateAttr(default=None)

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            raise ProcessingError(_describe_validation_error(exc, type(self), None)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ProcessingError(_describe_validation_error(exc, type(self), None)) from None

    # -- construction -----------------------------------------------------
    @classmethod
    def from_dict(
        cls: type[P],
        data: dict[str, Any],
        *,
        source: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> P:
        """Build from a settings dict (a ``preprocessor_config.json``'s content), applying ``overrides``.

        ``overrides`` must name declared settings or keys present in ``data``;
        anything else raises :class:`ProcessingError` with the closest names.
        """
        data = dict(data)
        loaded_type = data.pop(cls.type_key, None) if cls.type_key else None
        for legacy_key in cls.legacy_type_keys:
            legacy = data.pop(legacy_key, None)
            if loaded_type is None and isinstance(legacy, str):
                loaded_type = cls._type_from_legacy(legacy)
        unknown = [key for key in overrides if key not in cls.model_fields and key not in data]
        if unknown:
            raise ProcessingError(_unknown_settings_message(cls, unknown, list(data)))
        merged = {**data, **overrides}
        try:
            instance = cls.model_validate(merged)
        except ValidationError as exc:
            raise ProcessingError(_describe_validation_error(exc, cls, source)) from None
        instance._source = str(source) if source is not None else None
        instance._loaded_type = loaded_type if isinstance(loaded_type, str) else None
        try:
            instance.check_settings()
        except ProcessingError as exc:
            if source is None:
                raise
            raise ProcessingError(f"{source}: {exc}") from None
        return instance

    @classmethod
    def from_json_file(cls: type[P], path: str | os.PathLike, **overrides: Any) -> P:
        """Build from a JSON settings file."""
        return cls.from_dict(read_json_object(path), source=path, **overrides)

    @classmethod
    def from_pretrained(cls: type[P], path_or_repo: str | os.PathLike, **kwargs: Any) -> P:
        """Load the settings of a folder, a JSON file or a hub repo id.

        Hub options (``revision``, ``cache_dir``, ``local_files_only``,
        ``token``, ``subfolder``) are accepted; other keyword arguments
        override values read from the file. Like transformers, settings nested
        under ``processor_key`` in ``processor_config.json`` take precedence
        over ``preprocessor_config.json``.
        """
        options = HubOptions.from_kwargs(kwargs)
        for key in _IGNORED_LOAD_KWARGS & kwargs.keys():
            logger.debug("Ignoring %s=%r: it has no meaning in bestiary.", key, kwargs.pop(key))
        data, source = cls._read_settings(path_or_repo, options)
        return cls.from_dict(data, source=source, **kwargs)

    @classmethod
    def _read_settings(cls, path_or_repo: str | os.PathLike, options: HubOptions) -> tuple[dict[str, Any], Path]:
        local = Path(path_or_repo).expanduser()
        if local.is_file():
            return read_json_object(local), local
        if cls.processor_key:
            try:
                combined = resolve_file(path_or_repo, PROCESSOR_CONFIG_NAME, options, required=False)
            except HubError:  # offline and not cached: report the main file below instead
                combined = None
            if combined is not None:
                nested = read_json_object(combined).get(cls.processor_key)
                if isinstance(nested, dict):
                    return dict(nested), combined
        path = resolve_file(path_or_repo, cls.config_filename, options, required=False)
        if path is None:
            raise HubError(
                f"{cls.config_filename} not found in {str(path_or_repo)!r} (nor {cls.processor_key!r} settings in "
                f"{PROCESSOR_CONFIG_NAME}). Pass the folder that holds the {cls.__name__} settings, or build one "
                f"with {cls.__name__}(...) and save_pretrained() it."
            )
        return read_json_object(path), path

    @classmethod
    def _type_from_legacy(cls, legacy_type: str) -> str:
        return legacy_type

    def check_settings(self) -> None:
        """Raise :class:`ProcessingError` when settings contradict each other (override to add checks)."""

    def with_overrides(self: P, **overrides: Any) -> P:
        """Return a validated copy with some settings changed (for one call)."""
        unknown = [key for key in overrides if key not in type(self).model_fields and key not in self._extras()]
        if unknown:
            raise ProcessingError(_unknown_settings_message(type(self), unknown, list(self._extras())))
        copy = self.model_copy(deep=True)
        for key, value in overrides.items():
            setattr(copy, key, value)
        copy.check_settings()
        return copy

    # -- serialisation ----------------------------------------------------
    @property
    def source(self) -> str | None:
        """The file these settings were read from, if any."""
        return self._source

    def _extras(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def transformers_type(self) -> str:
        """Return the transformers class name written under ``type_key``."""
        return type(self).transformers_class or self._loaded_type or type(self).default_transformers_class

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as transformers writes them, type key included, keys sorted.

        Declared settings whose value is None are left out (transformers then
        uses its class default, which is what None means there).
        """
        data: dict[str, Any] = {}
        dumped = self.model_dump(mode="json", exclude=set(self._extras()))
        for name, value in dumped.items():
            if value is not None:
                data[name] = value
        for name, value in self._extras().items():
            data[name] = _plain(value)
        if self.type_key:
            data[self.type_key] = self.transformers_type()
        return dict(sorted(data.items()))

    def to_json_string(self) -> str:
        """Return the settings as indented JSON, keys sorted, ending with a newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> Path:
        """Write the settings to ``path`` atomically and return it."""
        path = Path(path)
        atomic_write_text(path, self.to_json_string())
        return path

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write ``preprocessor_config.json`` into ``save_directory`` atomically; return the written paths."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ProcessingError(f"save_pretrained needs a directory, but {directory} is a file.")
        directory.mkdir(parents=True, exist_ok=True)
        path = self.to_json_file(directory / self.config_filename)
        logger.info("%s saved in %s", type(self).__name__, path)
        return [path]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    __str__ = __repr__


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file holding an object; raise :class:`ProcessingError` naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProcessingError(f"Cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProcessingError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    if not isinstance(data, dict):
        raise ProcessingError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as temporary, open(temporary, "x", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _describe_validation_error(exc: ValidationError, cls: type, source: str | os.PathLike | None) -> str:
    where = f" in {source}" if source is not None else ""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(settings)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"field {field!r}: {message} (got {error.get('input')!r})")
    return f"Invalid {cls.__name__} settings{where}: " + "; ".join(lines)


def _unknown_settings_message(cls: type[Preprocessor], unknown: list[str], extra_keys: list[str]) -> str:
    known = sorted(set(cls.model_fields) | set(extra_keys))
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return f"{cls.__name__} has no setting {', '.join(parts)}; check the spelling against the class's fields."
