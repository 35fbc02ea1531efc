"""The backbone contract: which stages a backbone returns, and how heads build their backbone.

A backbone is a model whose forward returns
:class:`bestiary.outputs.BackboneOutput` with one feature map per selected
stage. Every backbone has an ordered list of ``stage_names`` (Swin:
``["stem", "stage1", ...]``; a timm ResNet: ``["act1", "layer1", ...]``) and
the caller picks some of them, by name (``out_features``) or by position
(``out_indices``, negative positions count from the end). This module holds:

- :func:`select_stages`, the one validator of that choice: unknown names,
  out-of-range or duplicate positions and contradicting name/position lists
  raise :class:`~bestiary.errors.ConfigError` naming the argument and the fix;
  the requested order is kept.
- :class:`BackboneConfigMixin`, the base of configs that carry the choice
  (``out_features`` / ``out_indices`` in ``config.json``, as transformers writes them).
- :class:`BackboneMixin`, the model side: ``stage_names``, ``out_features``,
  ``out_indices``, ``channels``, ``strides`` and feature-map selection.
- :class:`BackboneHolderConfig` and :func:`load_backbone`, so that a head in
  any plugin builds whichever registered backbone its config names, through a
  nested ``backbone_config`` or a timm model name.

Importing this module imports neither torch nor a plugin.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError, field_validator

from bestiary.config import Config
from bestiary.errors import ConfigError

logger = logging.getLogger(__name__)

SELECTOR_KEYS: tuple[str, str] = ("out_features", "out_indices")
TIMM_BACKBONE_TYPE = "timm_backbone"


# -- the selector -----------------------------------------------------------
@dataclass(frozen=True)
class StageSelection:
    """The stages a backbone returns: names and non-negative positions, in the requested order."""

    stage_names: tuple[str, ...]
    out_features: tuple[str, ...]
    out_indices: tuple[int, ...]


def select_stages(
    stage_names: Sequence[str],
    out_features: Sequence[str] | str | None = None,
    out_indices: Sequence[int] | int | None = None,
    *,
    default: Sequence[int] = (-1,),
) -> StageSelection:
    """Return the validated :class:`StageSelection` for ``out_features`` and/or ``out_indices``.

    ``out_features`` names stages, ``out_indices`` gives their positions in
    ``stage_names`` (negative positions count from the end). Either may be
    given; when both are, they must name the same stages in the same order.
    When neither is, ``default`` positions are used (the last stage). The
    requested order is kept, so ``feature_maps`` come back in that order.

    Raises :class:`ConfigError` for unknown names, out-of-range positions,
    duplicates, empty selections and contradicting lists.
    """
    names = tuple(str(name) for name in stage_names)
    if not names:
        raise ConfigError("The backbone has no stages to select from (stage_names is empty).")
    features = _as_list(out_features, "out_features")
    indices = _as_list(out_indices, "out_indices")
    from_features = _positions_of_features(names, features) if features is not None else None
    from_indices = _normalise_indices(names, indices) if indices is not None else None
    if from_features is not None and from_indices is not None and from_features != from_indices:
        raise ConfigError(
            f"out_features={list(features)} and out_indices={list(indices)} select different stages "
            f"({[names[i] for i in from_features]} vs {[names[i] for i in from_indices]}); "
            "pass only one of them, or make them agree."
        )
    positions = from_features if from_features is not None else from_indices
    if positions is None:
        positions = _normalise_indices(names, list(default))
    return StageSelection(names, tuple(names[i] for i in positions), tuple(positions))


def _as_list(value: Any, argument: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{argument} is empty; select at least one stage, or pass None for the last stage.")
        return list(value)
    raise ConfigError(f"{argument} must be a list, got {type(value).__name__} {value!r}.")


def _positions_of_features(names: tuple[str, ...], features: list) -> list[int]:
    positions = []
    for feature in features:
        if not isinstance(feature, str):
            raise ConfigError(
                f"out_features holds stage names, got {feature!r} ({type(feature).__name__}); "
                "pass positions as out_indices= instead."
            )
        if feature not in names:
            close = difflib.get_close_matches(feature, names, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"out_features names unknown stage {feature!r}; the stages are {list(names)}.{hint}")
        positions.append(names.index(feature))
    duplicates = sorted({name for name in features if features.count(name) > 1})
    if duplicates:
        raise ConfigError(f"out_features={features} lists {duplicates} more than once; name each stage once.")
    return positions


def _normalise_indices(names: tuple[str, ...], indices: list) -> list[int]:
    count = len(names)
    positions = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(
                f"out_indices holds stage positions (integers), got {index!r} ({type(index).__name__}); "
                "pass stage names as out_features= instead."
            )
        if not -count <= index < count:
            raise ConfigError(
                f"out_indices value {index} is out of range for a backbone with {count} stages {list(names)}; "
                f"use a position from {-count} to {count - 1}."
            )
        positions.append(index % count)
    seen: dict[int, int] = {}
    for index, position in zip(indices, positions):
        if position in seen:
            same = f" ({seen[position]} and {index} are the same stage)" if seen[position] != index else ""
            raise ConfigError(
                f"out_indices={indices} selects stage {names[position]!r} twice{same}; list each stage once."
            )
        seen[position] = index
    return positions


# -- configs carrying a selection ------------------------------------------
class BackboneConfigMixin(Config):
    """Base of configs of models that can serve as backbones.

    Holds ``out_features`` and ``out_indices`` as transformers writes them in
    ``config.json``. Subclasses that know their stage names from the config
    alone (Swin) override :meth:`known_stage_names`; the selection is then
    validated and aligned (both lists filled, positions non-negative) on
    construction and on assignment. Assigning or overriding one of the two
    replaces the other, so ``from_pretrained(path, out_indices=[1])`` works
    on a ``config.json`` that already lists ``out_features``.
    """

    out_features: list[str] | None = None
    out_indices: list[int] | None = None

    @field_validator("out_features", "out_indices", mode="before")
    @classmethod
    def _wrap_scalar(cls, value: Any) -> Any:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return [value]
        return list(value) if isinstance(value, tuple) else value

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, type(self)) from None
        self.align_stage_selection()

    def known_stage_names(self) -> list[str] | None:
        """The stage names this config implies, or None when only the built model knows them."""
        return None

    def stage_selection(self) -> StageSelection | None:
        """The validated selection, or None while the stage names are unknown."""
        names = self.known_stage_names()
        if names is None:
            return None
        return select_stages(names, self.out_features, self.out_indices)

    def align_stage_selection(self, source: str | os.PathLike | None = None) -> None:
        """Validate the selection and store both lists in their aligned form (no-op while stages are unknown)."""
        try:
            selection = self.stage_selection()
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(f"{source}: {exc}") from None
        if selection is not None:
            self.__dict__["out_features"] = list(selection.out_features)
            self.__dict__["out_indices"] = list(selection.out_indices)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str | os.PathLike | None = None, **overrides: Any
    ) -> "BackboneConfigMixin":
        """Build from a ``config.json`` dict; an override of one selector replaces both stored selectors."""
        given = [key for key in SELECTOR_KEYS if overrides.get(key) is not None]
        if len(given) == 1:
            data = {key: value for key, value in data.items() if key not in SELECTOR_KEYS}
        config = super().from_dict(data, source=source, **overrides)
        config.align_stage_selection(source)
        return config

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "BackboneConfigMixin":
        """Copy the config; a selector in ``update`` replaces both stored selectors and is validated."""
        update = dict(update or {})
        selectors = {key: update.pop(key) for key in SELECTOR_KEYS if key in update}
        copy = super().model_copy(update=update, deep=deep)
        if selectors:
            copy.set_stage_selection(selectors.get("out_features"), selectors.get("out_indices"))
        return copy

    def set_stage_selection(
        self, out_features: Sequence[str] | str | None = None, out_indices: Sequence[int] | int | None = None
    ) -> None:
        """Replace the selection with ``out_features`` and/or ``out_indices`` (validated when stages are known)."""
        features = self._wrap_scalar(out_features) if out_features is not None else None
        indices = self._wrap_scalar(out_indices) if out_indices is not None else None
        names = self.known_stage_names()
        if names is not None:
            selection = select_stages(names, features, indices)
            features, indices = list(selection.out_features), list(selection.out_indices)
        else:
            _as_list(features, "out_features")
            _as_list(indices, "out_indices")
        self.__dict__["out_features"] = features
        self.__dict__["out_indices"] = indices

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "out_features":
            self.set_stage_selection(out_features=value)
        elif name == "out_indices":
            self.set_stage_selection(out_indices=value)
        else:
            super().__setattr__(name, value)


def _config_error(exc: ValidationError, cls: type) -> ConfigError:
    """Turn pydantic's error into a :class:`ConfigError`, keeping our own message when a validator raised one."""
    problems = []
    for error in exc.errors():
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, ConfigError):
            problems.append(str(original))
        else:
            field = ".".join(str(part) for part in error["loc"]) or "(root)"
            problems.append(f"field {field!r}: {error['msg']} (got {error.get('input')!r})")
    if len(problems) == 1 and problems[0] and not problems[0].startswith("field "):
        return ConfigError(problems[0])
    return ConfigError(f"Invalid {cls.__name__}: " + "; ".join(problems))


# -- the model side --------------------------------------------------------------
class BackboneMixin:
    """Model-side backbone contract; list it before ``PreTrainedModel`` in the bases.

    A backbone calls :meth:`_init_backbone` in ``__init__`` (after
    ``PreTrainedModel.__init__``) with every stage's name, channel count and
    stride (reduction from the input), and builds its ``feature_maps`` with
    :meth:`_select_feature_maps`. The selection is read from the config's
    ``out_features`` / ``out_indices``, validated, and written back aligned,
    so a saved ``config.json`` says exactly what the model returns.
    """

    main_input_name: ClassVar[str] = "pixel_values"

    _stage_selection: StageSelection
    _stage_channels: tuple[int, ...]
    _stage_strides: tuple[int, ...]

    def _init_backbone(
        self, stage_names: Sequence[str], stage_channels: Sequence[int], stage_strides: Sequence[int]
    ) -> None:
        """Record every stage's name, channels and stride, and validate the config's selection against them."""
        if not len(stage_names) == len(stage_channels) == len(stage_strides):
            raise ConfigError(
                f"{type(self).__name__}: stage_names, channels and strides must have one entry per stage; got "
                f"{len(stage_names)}, {len(stage_channels)} and {len(stage_strides)}."
            )
        config = self.config  # type: ignore[attr-defined]
        selection = select_stages(
            stage_names, getattr(config, "out_features", None), getattr(config, "out_indices", None)
        )
        self._stage_selection = selection
        self._stage_channels = tuple(int(c) for c in stage_channels)
        self._stage_strides = tuple(int(s) for s in stage_strides)
        config.__dict__["out_features"] = list(selection.out_features)
        config.__dict__["out_indices"] = list(selection.out_indices)

    @property
    def stage_names(self) -> list[str]:
        """Every stage of the backbone, in forward order."""
        return list(self._stage_selection.stage_names)

    @property
    def out_features(self) -> list[str]:
        """Names of the stages returned as ``feature_maps``, in the returned order."""
        return list(self._stage_selection.out_features)

    @property
    def out_indices(self) -> list[int]:
        """Positions (in ``stage_names``, non-negative) of the returned stages, in the returned order."""
        return list(self._stage_selection.out_indices)

    @property
    def out_feature_channels(self) -> dict[str, int]:
        """Channel count of every stage, by name."""
        return dict(zip(self._stage_selection.stage_names, self._stage_channels))

    @property
    def out_feature_strides(self) -> dict[str, int]:
        """Stride (input pixels per feature-map pixel) of every stage, by name."""
        return dict(zip(self._stage_selection.stage_names, self._stage_strides))

    @property
    def channels(self) -> list[int]:
        """Channel count of each returned feature map, in the returned order."""
        return [self._stage_channels[i] for i in self._stage_selection.out_indices]

    @property
    def strides(self) -> list[int]:
        """Stride of each returned feature map, in the returned order."""
        return [self._stage_strides[i] for i in self._stage_selection.out_indices]

    def _select_feature_maps(self, stage_maps: Sequence[Any]) -> tuple[Any, ...]:
        """Pick the selected stages' maps, in the requested order, from one map per stage."""
        if len(stage_maps) != len(self._stage_selection.stage_names):
            raise ConfigError(
                f"{type(self).__name__} produced {len(stage_maps)} stage maps for "
                f"{len(self._stage_selection.stage_names)} stages."
            )
        return tuple(stage_maps[i] for i in self._stage_selection.out_indices)


# -- heads holding a backbone -----------------------------------------------------
def backbone_config_from(value: Config | dict[str, Any] | None) -> Config | None:
    """Return ``value`` as the config class registered for its ``model_type`` (dicts are converted).

    A dict must carry ``model_type`` (as transformers nests ``backbone_config``);
    its class comes from the registry, so any installed plugin's backbone works.
    """
    if value is None or isinstance(value, Config):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"backbone_config must be a config or a dict with a 'model_type', got {type(value).__name__}."
        )
    model_type = value.get("model_type")
    if not model_type:
        raise ConfigError(
            "backbone_config has no 'model_type'; add one, for example {'model_type': 'swin', ...} "
            f"or {{'model_type': '{TIMM_BACKBONE_TYPE}', 'backbone': 'resnet18'}}."
        )
    from bestiary.auto import config_class_for

    return config_class_for(model_type).from_dict(value)


class BackboneHolderConfig(Config):
    """Base of head configs (detection, segmentation, depth) that build a backbone with :func:`load_backbone`.

    Set either ``backbone_config`` (a config, or a dict with ``model_type``:
    any registered backbone) or ``backbone`` (a timm model name with
    ``use_timm_backbone=True``, else a checkpoint folder or repo id).
    ``backbone_kwargs`` go to the backbone's config (``out_indices``, ...).
    """

    backbone_config: Config | None = None
    backbone: str | None = None
    use_timm_backbone: bool = False
    use_pretrained_backbone: bool = False
    backbone_kwargs: dict[str, Any] | None = None

    @field_validator("backbone_config", mode="before")
    @classmethod
    def _resolve_backbone_config(cls, value: Any) -> Any:
        return backbone_config_from(value)


def load_backbone(config: Config, *, weights: str | os.PathLike | None = None) -> Any:
    """Build the backbone a head's ``config`` describes and return it (an ``nn.Module``).

    In order: ``config.backbone_config`` (a config or a dict with
    ``model_type``) builds that registered backbone; ``config.backbone`` with
    ``use_timm_backbone`` builds a timm backbone (weights: pretrained when
    ``use_pretrained_backbone``, else random, and said so in the log);
    ``config.backbone`` without it names a checkpoint folder or repo id
    (loaded when ``use_pretrained_backbone``, else only its config is used);
    finally a config that is itself a backbone's builds that backbone.
    ``weights`` forces the weight source of a timm backbone
    (``"random"``, ``"pretrained"`` or a file path).

    Inside a head's ``from_pretrained`` (parameters on the meta device) the
    backbone is built empty and its weights come from the head's checkpoint.
    """
    from bestiary.auto import AutoBackbone, AutoConfig, config_class_for

    pretrained = bool(getattr(config, "use_pretrained_backbone", False))
    kwargs = dict(getattr(config, "backbone_kwargs", None) or {})
    nested = backbone_config_from(getattr(config, "backbone_config", None))
    name = getattr(config, "backbone", None)
    if nested is not None:
        if name:
            raise ConfigError(
                f"{type(config).__name__} sets both backbone_config and backbone={name!r}; keep only one of them."
            )
        if kwargs:
            nested = nested.model_copy(update=kwargs)
        return _build(AutoBackbone.model_class_for(nested), nested, pretrained, weights)
    if name:
        if getattr(config, "use_timm_backbone", False):
            timm_config = config_class_for(TIMM_BACKBONE_TYPE).from_dict(
                {"backbone": name, "num_channels": getattr(config, "num_channels", 3), **kwargs}
            )
            return _build(AutoBackbone.model_class_for(timm_config), timm_config, pretrained, weights)
        if pretrained and not _building_on_meta():
            logger.info("Loading the backbone's weights from %s.", name)
            return AutoBackbone.from_pretrained(name, **kwargs)
        backbone_config = AutoConfig.from_pretrained(name, **kwargs)
        return _build(AutoBackbone.model_class_for(backbone_config), backbone_config, False, weights)
    if isinstance(config, BackboneConfigMixin):
        return _build(AutoBackbone.model_class_for(config), config, pretrained, weights)
    raise ConfigError(
        f"{type(config).__name__} names no backbone: set backbone_config (a config or a dict with 'model_type', "
        "e.g. {'model_type': 'swin', 'out_indices': [1, 2]}) or backbone='resnet18' with use_timm_backbone=True."
    )


def _build(model_class: type, config: Config, pretrained: bool, weights: str | os.PathLike | None) -> Any:
    if getattr(model_class, "accepts_weight_source", False):
        source = weights if weights is not None else ("pretrained" if pretrained else "random")
        return model_class.from_config(config, weights=source)
    if weights is not None:
        raise ConfigError(
            f"weights={weights!r} applies to timm backbones only; {model_class.__name__} gets its weights "
            "from the head's checkpoint (from_pretrained) or from AutoBackbone.from_pretrained."
        )
    if not _building_on_meta():
        logger.info(
            "%s built from its config with random weights; load a checkpoint with from_pretrained for trained ones.",
            model_class.__name__,
        )
    return model_class.from_config(config)


def building_on_meta() -> bool:
    """Whether parameters created now land on the meta device (inside ``from_pretrained``, or a meta device context).

    Backbones that can fetch weights themselves (timm) skip that while the
    caller is about to fill every parameter from a checkpoint.
    """
    import torch

    probe = torch.nn.Module()
    probe.register_parameter("probe", torch.nn.Parameter(torch.empty(0)))
    return probe.probe.is_meta


_building_on_meta = building_on_meta


__all__ = [
    "StageSelection",
    "select_stages",
    "BackboneConfigMixin",
    "BackboneMixin",
    "BackboneHolderConfig",
    "backbone_config_from",
    "load_backbone",
    "building_on_meta",
]
