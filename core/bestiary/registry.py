"""Plugin discovery and the architecture registry.

Plugins announce themselves through entry points in the group
``bestiary.plugins``. Each entry point names a module of pluggy hook
implementations (see :mod:`bestiary.hookspecs`) that return
:class:`ArchitectureSpec` and :class:`PipelineSpec` declarations. Nothing here
imports torch or a model class: references are ``"module:Class"`` strings,
imported only when first used.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bestiary.errors import (
    AmbiguousProviderError,
    InvalidReferenceError,
    NotRegisteredError,
    ReferenceImportError,
)
from bestiary.tasks import PROCESSOR_KINDS, TASKS_BY_NAME

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bestiary.plugins"
STRICT_ENV = "BESTIARY_STRICT_PLUGINS"
PREFER_ENV = "BESTIARY_PREFER"
RUNTIME_PROVIDER = "<runtime>"

_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_reference(value: str, what: str = "reference") -> str:
    """Return ``value`` if it has the form ``"package.module:Class"``, else raise."""
    if not isinstance(value, str) or not _REFERENCE.match(value):
        raise InvalidReferenceError(
            f"Invalid {what} {value!r}: expected the form 'package.module:ClassName' "
            "(a dotted module path, one colon, then an attribute name)."
        )
    return value


def import_reference(reference: str) -> Any:
    """Import and return the object a ``"module:Attr"`` reference names.

    Raises :class:`ReferenceImportError` (chained to the original error) when
    the module or attribute cannot be imported.
    """
    check_reference(reference)
    module_name, _, attr_path = reference.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise ReferenceImportError(
            f"{reference!r} is registered but failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return obj


class ArchitectureSpec(BaseModel):
    """Declaration of one architecture (one ``model_type``) by a plugin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: str = Field(min_length=1)
    config: str
    models: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    tokenizer: str | None = None
    image_processor: str | None = None
    feature_extractor: str | None = None
    processor: str | None = None
    gguf_architectures: tuple[str, ...] = ()
    gguf_converter: str | None = None
    description: str = ""
    override: bool = False

    @field_validator("config", "tokenizer", "image_processor", "feature_extractor", "processor", "gguf_converter")
    @classmethod
    def _check_reference(cls, value: str | None, info) -> str | None:
        return None if value is None else check_reference(value, f"'{info.field_name}' reference")

    @field_validator("models", mode="before")
    @classmethod
    def _check_models(cls, value: dict) -> dict:
        if not isinstance(value, dict):
            raise ValueError("'models' must map a task name to a 'module:Class' reference or a list of them")
        checked = {}
        for task, refs in value.items():
            if task not in TASKS_BY_NAME:
                close = difflib.get_close_matches(task, TASKS_BY_NAME, n=3)
                raise ValueError(f"unknown task {task!r} in 'models'" + (f"; did you mean {close}?" if close else ""))
            refs = (refs,) if isinstance(refs, str) else tuple(refs)
            if not refs:
                raise ValueError(f"task {task!r} in 'models' lists no class")
            checked[task] = tuple(check_reference(ref, f"model reference for task {task!r}") for ref in refs)
        return checked

    def class_names(self) -> dict[str, str]:
        """Map every model class name this spec registers to its reference."""
        return {ref.rpartition(":")[2].rpartition(".")[2]: ref for refs in self.models.values() for ref in refs}


class PipelineSpec(BaseModel):
    """Declaration of a pipeline task by a plugin (or the core)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(min_length=1)
    pipeline: str
    model_tasks: tuple[str, ...] = ()
    default_model: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    override: bool = False

    @field_validator("pipeline")
    @classmethod
    def _check_reference(cls, value: str) -> str:
        return check_reference(value, "'pipeline' reference")


@dataclass
class Provider:
    """Where a registration came from."""

    plugin: str
    distribution: str
    version: str = ""


@dataclass
class Registration:
    """One spec and who provided it."""

    spec: Any
    provider: Provider


@dataclass
class PluginFailure:
    """A plugin that failed to load or whose hooks raised."""

    plugin: str
    distribution: str
    error: str


@dataclass
class PluginInfo:
    """One discovered plugin and what it registered."""

    name: str
    distribution: str
    version: str
    module: str
    architectures: list[str] = field(default_factory=list)
    pipelines: list[str] = field(default_factory=list)


class Registry:
    """Everything the installed plugins (and runtime calls) register."""

    def __init__(self) -> None:
        self._architectures: dict[str, list[Registration]] = {}
        self._pipelines: dict[str, list[Registration]] = {}
        self._objects: dict[str, Any] = {}  # reference -> object, for runtime registrations and imports
        self._preferred: dict[str, str] = _preferences_from_env()
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._discovered = False
        self._lock = threading.RLock()

    # -- discovery --------------------------------------------------------
    def discover(self) -> "Registry":
        """Load every installed plugin once (idempotent); return self."""
        with self._lock:
            if self._discovered:
                return self
            self._discovered = True
            from importlib.metadata import entry_points

            import pluggy

            from bestiary import hookspecs

            manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            manager.add_hookspecs(hookspecs)
            for entry_point in entry_points(group=ENTRY_POINT_GROUP):
                self._load_entry_point(manager, entry_point)
        return self

    def _load_entry_point(self, manager, entry_point) -> None:
        distribution, version = _distribution_of(entry_point)
        provider = Provider(plugin=entry_point.name, distribution=distribution, version=version)
        try:
            module = entry_point.load()
            if manager.is_registered(module):
                return  # the same module announced twice: a no-op
            manager.register(module, name=entry_point.name)
            architectures = _call_plugin_hook(manager.hook.bestiary_architectures, entry_point.name)
            pipelines = _call_plugin_hook(manager.hook.bestiary_pipelines, entry_point.name)
        except Exception as exc:  # a broken plugin is recorded, not fatal
            self._record_failure(provider, exc)
            return
        info = PluginInfo(entry_point.name, distribution, version, entry_point.value)
        self.plugins[entry_point.name] = info
        for spec in architectures:
            if self._add(self._architectures, spec.model_type, spec, provider):
                info.architectures.append(spec.model_type)
        for spec in pipelines:
            if self._add(self._pipelines, spec.task, spec, provider):
                info.pipelines.append(spec.task)

    def _record_failure(self, provider: Provider, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.failures.append(PluginFailure(provider.plugin, provider.distribution, message))
        if os.environ.get(STRICT_ENV, "0") not in {"", "0", "false", "False"}:
            raise RuntimeError(
                f"Plugin {provider.plugin!r} ({provider.distribution}) failed to load: {message} "
                f"({STRICT_ENV} is set, so plugin failures are fatal)."
            ) from exc
        logger.warning("Plugin %r (%s) failed to load: %s", provider.plugin, provider.distribution, message)

    def _add(self, table: dict[str, list[Registration]], key: str, spec: Any, provider: Provider) -> bool:
        entries = table.setdefault(key, [])
        for entry in entries:
            if entry.provider.distribution == provider.distribution:
                if entry.spec != spec and provider.distribution == RUNTIME_PROVIDER:
                    entries.remove(entry)
                    break
                return False  # the same registration twice from one distribution is a no-op
        if spec.override and entries:
            logger.warning(
                "%r from %s overrides the registration by %s.",
                key,
                provider.distribution,
                ", ".join(entry.provider.distribution for entry in entries),
            )
        entries.append(Registration(spec, provider))
        return True

    # -- runtime registration --------------------------------------------
    def register_architecture(self, spec: ArchitectureSpec, objects: dict[str, Any] | None = None) -> None:
        """Register ``spec`` at run time (from a script or notebook).

        ``objects`` maps references used in the spec to already-imported
        objects, so classes defined in ``__main__`` or a function work.
        """
        with self._lock:
            self.discover()
            self._objects.update(objects or {})
            self._add(self._architectures, spec.model_type, spec, Provider(RUNTIME_PROVIDER, RUNTIME_PROVIDER))

    def register_pipeline(self, spec: PipelineSpec, objects: dict[str, Any] | None = None) -> None:
        """Register a pipeline task at run time."""
        with self._lock:
            self.discover()
            self._objects.update(objects or {})
            self._add(self._pipelines, spec.task, spec, Provider(RUNTIME_PROVIDER, RUNTIME_PROVIDER))

    def prefer(self, name: str, distribution: str) -> None:
        """Resolve the model type or pipeline task ``name`` to the one ``distribution`` provides."""
        self._preferred[name] = distribution

    # -- lookups ----------------------------------------------------------
    def resolve(self, reference: str) -> Any:
        """Return the object behind a reference, importing it on first use."""
        if reference not in self._objects:
            self._objects[reference] = import_reference(reference)
        return self._objects[reference]

    def model_types(self) -> list[str]:
        """Every registered model type, sorted."""
        return sorted(self.discover()._architectures)

    def pipeline_tasks(self) -> list[str]:
        """Every registered pipeline task, sorted."""
        return sorted(self.discover()._pipelines)

    def architecture(self, model_type: str) -> Registration:
        """Return the registration serving ``model_type``, or raise a helpful error."""
        self.discover()
        entries = self._architectures.get(model_type)
        if not entries:
            raise NotRegisteredError(self._unknown_message("model_type", model_type, self._architectures))
        return self._choose(model_type, entries)

    def pipeline_spec(self, task: str) -> Registration:
        """Return the registration serving pipeline ``task`` (or one of its aliases)."""
        self.discover()
        entries = self._pipelines.get(task)
        if not entries:
            for key, candidates in self._pipelines.items():
                if any(task in entry.spec.aliases for entry in candidates):
                    return self._choose(key, candidates)
            raise NotRegisteredError(self._unknown_message("pipeline task", task, self._pipelines))
        return self._choose(task, entries)

    def _choose(self, name: str, entries: list[Registration]) -> Registration:
        if len(entries) == 1:
            return entries[0]
        preferred = self._preferred.get(name)
        if preferred:
            for entry in entries:
                if entry.provider.distribution == preferred:
                    return entry
        overriding = [entry for entry in entries if entry.spec.override]
        if overriding:
            return overriding[-1]
        runtime = [entry for entry in entries if entry.provider.distribution == RUNTIME_PROVIDER]
        if runtime:
            return runtime[-1]
        providers = ", ".join(f"{entry.provider.distribution} (plugin {entry.provider.plugin!r})" for entry in entries)
        raise AmbiguousProviderError(
            f"{name!r} is registered by more than one distribution: {providers}. Choose one with "
            f"{PREFER_ENV}='{name}={entries[0].provider.distribution}', or "
            f"bestiary.registry.get_registry().prefer({name!r}, '{entries[0].provider.distribution}'), "
            "or uninstall one of them."
        )

    def _unknown_message(self, what: str, name: str, table: dict) -> str:
        message = f"Unknown {what} {name!r}."
        close = difflib.get_close_matches(name, list(table), n=3)
        if close:
            message += f" Close matches: {', '.join(close)}."
        hint = catalog_hint(name)
        if hint:
            message += " " + hint
        elif not close:
            installed = ", ".join(sorted(self.plugins)) or "none"
            message += f" Installed plugins: {installed}."
        if self.failures:
            failed = "; ".join(f"{failure.plugin} ({failure.distribution}): {failure.error}" for failure in self.failures)
            message += f" Plugins that failed to load: {failed}."
        return message

    def model_reference(self, model_type: str, task: str, architectures: list[str] | None = None) -> str:
        """Return the reference of the class serving ``task`` for ``model_type``.

        When the config lists ``architectures`` and one of them is a class the
        spec registers for that task, it wins over the task's default class.
        """
        registration = self.architecture(model_type)
        spec: ArchitectureSpec = registration.spec
        for candidate_task in (task, *TASKS_BY_NAME[task].fallbacks):
            refs = spec.models.get(candidate_task)
            if not refs:
                continue
            by_name = {ref.rpartition(":")[2].rpartition(".")[2]: ref for ref in refs}
            for name in architectures or ():
                if name in by_name:
                    return by_name[name]
            return refs[0]
        served = ", ".join(sorted(spec.models)) or "none"
        raise NotRegisteredError(
            f"model_type {model_type!r} (from {registration.provider.distribution}) has no model for task "
            f"{task!r}. It serves: {served}. Use the Auto class of one of those tasks, or install a plugin "
            f"that adds {task!r} for {model_type!r}."
        )

    def processor_reference(self, model_type: str, kind: str) -> str | None:
        """Return the reference of ``kind`` (tokenizer, image_processor, ...) for ``model_type``, or None."""
        if kind not in PROCESSOR_KINDS:
            raise ValueError(f"Unknown processor kind {kind!r}; expected one of {PROCESSOR_KINDS}.")
        return getattr(self.architecture(model_type).spec, kind)

    def find_by_class_name(self, class_name: str) -> tuple[str, str] | None:
        """Return (model_type, reference) of the model class registered under ``class_name``."""
        self.discover()
        for model_type, entries in self._architectures.items():
            for entry in entries:
                ref = entry.spec.class_names().get(class_name)
                if ref:
                    return model_type, ref
        return None

    def gguf_architecture(self, gguf_arch: str) -> Registration:
        """Return the registration that declares the GGUF architecture name ``gguf_arch``."""
        self.discover()
        for entries in self._architectures.values():
            for entry in entries:
                if gguf_arch in entry.spec.gguf_architectures:
                    return entry
        known = sorted({a for entries in self._architectures.values() for e in entries for a in e.spec.gguf_architectures})
        raise NotRegisteredError(
            f"No installed plugin reads the GGUF architecture {gguf_arch!r}. Readable: {', '.join(known) or 'none'}."
        )

    def list_architectures(self) -> list[dict[str, Any]]:
        """Describe every registered architecture from metadata only (no model import)."""
        self.discover()
        rows = []
        for model_type in sorted(self._architectures):
            for entry in self._architectures[model_type]:
                spec: ArchitectureSpec = entry.spec
                rows.append(
                    {
                        "model_type": model_type,
                        "tasks": sorted(spec.models),
                        "classes": sorted(spec.class_names()),
                        "processors": {kind: getattr(spec, kind) for kind in PROCESSOR_KINDS if getattr(spec, kind)},
                        "plugin": entry.provider.plugin,
                        "distribution": entry.provider.distribution,
                        "version": entry.provider.version,
                    }
                )
        return rows

    def conflicts(self) -> dict[str, list[str]]:
        """Names registered by more than one distribution, with the distributions."""
        self.discover()
        found = {}
        for table in (self._architectures, self._pipelines):
            for name, entries in table.items():
                if len(entries) > 1:
                    found[name] = [entry.provider.distribution for entry in entries]
        return found


def _call_plugin_hook(hook_caller, plugin_name: str) -> list:
    """Call one plugin's implementation of a hook (so results are attributed to it)."""
    results = []
    for implementation in hook_caller.get_hookimpls():
        if implementation.plugin_name == plugin_name:
            results.extend(implementation.function() or [])
    return results


_DIST_INFO = re.compile(r"^(?P<name>.+?)-(?P<version>[^-]+)\.(dist|egg)-info$")


def _distribution_of(entry_point) -> tuple[str, str]:
    """(normalised distribution name, version) of an entry point, read from its folder name when possible."""
    dist = entry_point.dist
    if dist is None:
        return "<unknown>", ""
    folder = getattr(dist, "_path", None)
    match = _DIST_INFO.match(getattr(folder, "name", ""))
    if match:
        return re.sub(r"[-_.]+", "-", match.group("name")).lower(), match.group("version")
    return dist.metadata["Name"], dist.version


def _preferences_from_env() -> dict[str, str]:
    preferences = {}
    for item in os.environ.get(PREFER_ENV, "").split(","):
        name, sep, distribution = item.partition("=")
        if sep and name.strip() and distribution.strip():
            preferences[name.strip()] = distribution.strip()
    return preferences


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """Return the process-wide registry, discovering plugins on first use."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = Registry()
    return _registry.discover()


def reset_registry() -> None:
    """Forget the registry so that the next use discovers plugins again (for tests)."""
    global _registry
    with _registry_lock:
        _registry = None
    importlib.invalidate_caches()


def list_architectures() -> list[dict[str, Any]]:
    """Describe every registered architecture (metadata only: imports no model code or torch)."""
    return get_registry().list_architectures()


def catalog_hint(name: str) -> str:
    """A hint from registry.yaml: which first-party distribution provides ``name``."""
    from bestiary.catalog import load_catalog

    for plugin in load_catalog().get("plugins", []):
        names = set(plugin.get("model_types", [])) | set(plugin.get("pipelines", []))
        if name in names:
            return (
                f"{name!r} is provided by {plugin['distribution']}, which is not installed: "
                f"pip install {plugin.get('pip', plugin['distribution'])}"
            )
    return ""
