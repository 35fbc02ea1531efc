"""``TimmBackbone``: any timm model with feature extraction, behind bestiary's backbone contract.

The wrapped model is ``timm.create_model(name, features_only=True,
out_indices=...)``, stored as ``_backbone`` so checkpoints use transformers'
tensor names (``_backbone.conv1.weight``, ...). Stage names, channels and
strides come from timm's ``feature_info``; the selection (``out_features`` /
``out_indices``) is validated against them and ``feature_maps`` come back in
the requested order, always as (batch, channels, height, width): the
channels-last maps of timm's Swin family are permuted (transformers'
TimmBackbone returns them as timm does).

Weights have an explicit source, always logged:

- ``weights="random"``: timm's own initialisation;
- ``weights="pretrained"``: timm's pretrained weights, fetched from the hub
  (an unreachable hub raises :class:`~bestiary.errors.HubError` saying what to do);
- ``weights="path/to/file"``: a timm-format state dict (``.safetensors``,
  ``.pth``, ``.bin``) of the full model, read by timm (pickles only with
  ``weights_only=True``);
- a bestiary / transformers checkpoint folder through ``from_pretrained``.

Leaving ``weights`` unset builds random weights with a warning.
timm is imported when a backbone is built, never at plugin discovery.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bestiary.backbone import BackboneMixin, building_on_meta
from bestiary.errors import CheckpointError, ConfigError, HubError
from bestiary.hub import HubOptions
from bestiary.modeling import PreTrainedModel
from bestiary.outputs import BackboneOutput
from bestiary_timm.configuration_timm_backbone import TimmBackboneConfig

logger = logging.getLogger(__name__)

WEIGHT_SOURCES = ("random", "pretrained")


def import_timm() -> Any:
    """Import and return timm, or raise an error saying how to install it."""
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency of bestiary-timm
        raise ConfigError("TimmBackbone needs timm; install it with `pip install timm`.") from exc
    return timm


class TimmBackbone(BackboneMixin, PreTrainedModel):
    """A timm feature extractor as a bestiary backbone; see the module docstring for weight sources."""

    config_class = TimmBackboneConfig
    base_model_prefix = ""
    main_input_name = "pixel_values"
    # load_backbone passes weights= to classes that declare this.
    accepts_weight_source: ClassVar[bool] = True

    def __init__(self, config: TimmBackboneConfig, weights: str | os.PathLike | None = None) -> None:
        super().__init__(config)
        timm = import_timm()
        if not config.backbone:
            raise ConfigError("TimmBackboneConfig.backbone is not set; set it to a timm model name such as 'resnet18'.")
        if not config.features_only:
            raise ConfigError(
                "TimmBackbone needs features_only=True (it returns feature maps); "
                "use timm.create_model directly for classification logits."
            )
        if not timm.is_model(config.backbone):
            close = timm.list_models(f"*{config.backbone.split('.')[0][:6]}*")[:3]
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise ConfigError(f"backbone={config.backbone!r} is not a timm model name.{hint}")
        create_kwargs = self._create_kwargs(config)
        stages, self._channels_last = _probe(timm, config.backbone, create_kwargs)
        stage_names = [stage["module"] for stage in stages]
        if config.stage_names is not None and list(config.stage_names) != stage_names:
            raise ConfigError(
                f"The config's stage_names {config.stage_names} do not match timm's feature_info for "
                f"{config.backbone!r} ({stage_names}); the checkpoint was saved with other timm_model_kwargs "
                "or another timm version. Remove stage_names from config.json to accept timm's."
            )
        self._init_backbone(stage_names, [s["num_chs"] for s in stages], [s["reduction"] for s in stages])
        config.__dict__["stage_names"] = stage_names
        self._built_indices = tuple(sorted(set(self.out_indices)))
        self.weight_source, pretrained, overlay = self._resolve_weights(config.backbone, weights)
        try:
            with _TimmLoadReport() as load_report:
                self._backbone = timm.create_model(
                    config.backbone,
                    pretrained=pretrained,
                    out_indices=self._built_indices,
                    pretrained_cfg_overlay=overlay,
                    **create_kwargs,
                )
        except (OSError, RuntimeError, ValueError) as exc:
            if not pretrained:
                raise
            raise self._weight_error(config.backbone, exc) from exc
        if pretrained:
            self._check_loaded(timm, config.backbone, load_report)
        built = [int(i) % len(stage_names) for i in self._backbone.feature_info.out_indices]
        if tuple(built) != self._built_indices:
            raise ConfigError(
                f"timm built {config.backbone!r} with out_indices {built}, not the requested {list(self._built_indices)}."
            )
        if config.freeze_batch_norm_2d:
            self.freeze_batch_norm_2d()
        self.post_init()

    # -- construction helpers -------------------------------------------------------
    @staticmethod
    def _create_kwargs(config: TimmBackboneConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"features_only": True, "in_chans": config.num_channels}
        if config.output_stride is not None:
            kwargs["output_stride"] = config.output_stride
        extra = dict(config.timm_model_kwargs or {})
        clashes = sorted(set(extra) & {"features_only", "in_chans", "out_indices", "pretrained", "output_stride"})
        if clashes:
            raise ConfigError(
                f"timm_model_kwargs sets {clashes}, which TimmBackboneConfig controls; use its own fields "
                "(num_channels, out_indices, output_stride) instead."
            )
        kwargs.update(extra)
        return kwargs

    def _resolve_weights(
        self, name: str, weights: str | os.PathLike | None
    ) -> tuple[str, bool, dict[str, Any] | None]:
        """Return (description, pretrained flag, pretrained_cfg overlay) for the weight source, and log it."""
        if building_on_meta():
            logger.debug("TimmBackbone %r: built empty, its weights come from the checkpoint being loaded.", name)
            return "checkpoint", False, None
        if weights is None:
            logger.warning(
                "TimmBackbone %r has random weights: no weight source was given. Pass weights='pretrained' (hub), "
                "weights='<file>' (a timm state dict) or weights='random' to make the choice explicit.",
                name,
            )
            return "random", False, None
        if isinstance(weights, str) and weights in WEIGHT_SOURCES:
            if weights == "random":
                logger.info("TimmBackbone %r: random weights (weights='random').", name)
                return "random", False, None
            logger.info("TimmBackbone %r: pretrained weights from timm's hub source (weights='pretrained').", name)
            return "pretrained", True, None
        if isinstance(weights, (str, os.PathLike)):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"weights={str(weights)!r} is neither 'random', 'pretrained' nor an existing file; "
                    "give the path of a timm state dict (.safetensors, .pth or .bin)."
                )
            logger.info("TimmBackbone %r: weights from the file %s.", name, path)
            return f"file:{path}", True, {"file": str(path)}
        raise ConfigError(
            f"weights must be 'random', 'pretrained', a file path or None, got {type(weights).__name__} {weights!r}."
        )

    def _weight_error(self, name: str, exc: BaseException) -> Exception:
        if self.weight_source.startswith("file:"):
            return CheckpointError(
                f"Could not load timm weights for {name!r} from {self.weight_source[5:]}: {exc}. The file must hold "
                f"a state dict of the full timm model {name!r} built with the same timm_model_kwargs."
            )
        return HubError(
            f"Could not fetch pretrained timm weights for {name!r}: {type(exc).__name__}: {exc}. Is a hub "
            "reachable? Without one, pass weights='<path to a timm state dict>' (or weights='random')."
        )

    def _check_loaded(self, timm: Any, name: str, report: "_TimmLoadReport") -> None:
        """Refuse weights that left layers randomly initialised (timm only logs that when extracting features)."""
        classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or ()
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        missing = [key for key in report.missing if not any(key.startswith(f"{head}.") for head in heads)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise self._weight_error(name, CheckpointError(f"the weights lack {shown}"))
        if report.unexpected:
            logger.warning(
                "TimmBackbone %r: %d tensors of the weights were not used (%s...).",
                name,
                len(report.unexpected),
                ", ".join(report.unexpected[:3]),
            )

    # -- alternative constructors ----------------------------------------------------
    @classmethod
    def from_timm(
        cls,
        name: str,
        *,
        out_indices: list[int] | int | None = None,
        out_features: list[str] | str | None = None,
        weights: str | os.PathLike | None = None,
        num_channels: int = 3,
        output_stride: int | None = None,
        freeze_batch_norm_2d: bool = False,
        **timm_model_kwargs: Any,
    ) -> "TimmBackbone":
        """Build the backbone of timm model ``name``; extra keyword arguments go to ``timm.create_model``."""
        config = TimmBackboneConfig(
            backbone=name,
            out_indices=out_indices,
            out_features=out_features,
            num_channels=num_channels,
            output_stride=output_stride,
            freeze_batch_norm_2d=freeze_batch_norm_2d,
            timm_model_kwargs=timm_model_kwargs or None,
        )
        return cls.from_config(config, weights=weights)

    @classmethod
    def from_config(
        cls,
        config: TimmBackboneConfig,
        *,
        weights: str | os.PathLike | None = None,
        dtype: str | torch.dtype | None = None,
        **overrides: Any,
    ) -> "TimmBackbone":
        """Build from ``config`` with the given weight source (random with a warning when None)."""
        if overrides:
            config = config.model_copy(update=overrides)
        model = cls(config, weights=weights)
        if dtype is not None:
            from bestiary.modeling import resolve_dtype

            model = model.to(resolve_dtype(dtype, config))
        return model

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "TimmBackbone":
        """Load a saved backbone folder (or hub repo); a bare timm model name loads timm's pretrained weights.

        ``TimmBackbone.from_pretrained("resnet18", out_indices=[1, 2])`` behaves as
        in transformers: the name is a timm model and its weights come from
        timm's hub source.
        """
        name = str(path_or_repo)
        if kwargs.get("config") is None and not Path(name).expanduser().exists():
            timm = import_timm()
            bare = name.removeprefix("timm/").removeprefix("hf-hub:timm/")
            if timm.is_model(bare) and not _has_config_file(name, kwargs):
                known = {"out_indices", "out_features", "num_channels", "output_stride", "freeze_batch_norm_2d"}
                options = {key: kwargs.pop(key) for key in list(kwargs) if key in known}
                weights = kwargs.pop("weights", "pretrained")
                return cls.from_timm(bare, weights=weights, **options)
        return super().from_pretrained(path_or_repo, **kwargs)

    def _after_pretrained_load(self, path_or_repo: str | os.PathLike, options: HubOptions) -> None:
        self.weight_source = f"checkpoint:{path_or_repo}"
        logger.info("TimmBackbone %r: weights from the checkpoint %s.", self.config.backbone, path_or_repo)

    # -- weights ---------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Keep timm's own initialisation (or its pretrained weights); nothing to do."""

    def _init_weights(self, module: nn.Module) -> None:
        # Used only for tensors a checkpoint lacks: the layer's own default initialisation, else a
        # conventional one (truncated normal for matrices and tables, ones for norm scales, zeros otherwise).
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                nn.init.trunc_normal_(param, std=0.02)
            elif name == "weight":
                nn.init.ones_(param)
            else:
                nn.init.zeros_(param)

    def freeze_batch_norm_2d(self) -> None:
        """Turn every BatchNorm2d of the timm model into a frozen (fixed statistics) one."""
        from timm.utils.model import freeze_batch_norm_2d

        freeze_batch_norm_2d(self._backbone)

    def unfreeze_batch_norm_2d(self) -> None:
        """Undo :meth:`freeze_batch_norm_2d`."""
        from timm.utils.model import unfreeze_batch_norm_2d

        unfreeze_batch_norm_2d(self._backbone)

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        """Return ``feature_maps`` of the selected stages, in the requested order.

        With ``output_hidden_states``, ``hidden_states`` holds every stage the
        wrapped model computes (up to the deepest selected one).
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions:
            raise ConfigError(
                "TimmBackbone cannot return attentions (timm feature extractors do not expose them); "
                "call it with output_attentions=False."
            )
        hidden_states = None
        if output_hidden_states and hasattr(self._backbone, "return_layers"):
            every = self._every_stage_layers()
            saved = self._backbone.return_layers
            self._backbone.return_layers = every
            try:
                hidden_states = tuple(self._backbone(pixel_values))
            finally:
                self._backbone.return_layers = saved
            by_index = dict(zip(sorted(int(i) for i in every.values()), hidden_states))
        else:
            by_index = dict(zip(self._built_indices, self._backbone(pixel_values)))
            if output_hidden_states:
                hidden_states = tuple(by_index[i] for i in self._built_indices)
        if self._channels_last:
            by_index = {index: stage.permute(0, 3, 1, 2) for index, stage in by_index.items()}
            if hidden_states is not None:
                hidden_states = tuple(stage.permute(0, 3, 1, 2) for stage in hidden_states)
        feature_maps = tuple(by_index[i] for i in self.out_indices)
        output = BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    def _every_stage_layers(self) -> dict[str, str]:
        """``return_layers`` naming every stage the wrapped model holds, up to the deepest selected one."""
        layers = dict(self._backbone.return_layers)
        children = {name for name, _ in self._backbone.named_children()}
        deepest = max(self._built_indices)
        for index, stage in enumerate(self.stage_names[: deepest + 1]):
            for key in (stage.replace(".", "_"), stage):
                if key in children:
                    layers.setdefault(key, str(index))
                    break
        return layers


def _probe(timm: Any, name: str, create_kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Return every stage of the feature extractor (timm's ``feature_info``) and whether its maps are NHWC.

    Both come from copies built on the meta device (no memory, no
    initialisation). Models whose stages emit channels-last maps (timm's Swin,
    ``output_fmt == "NHWC"``) are permuted to (batch, channels, height, width)
    by the backbone, unless timm's wrapper already returns NCHW
    (``forward_intermediates``-based extractors).
    """
    plain_kwargs = {key: value for key, value in create_kwargs.items() if key != "features_only"}
    try:
        with torch.device("meta"):
            features = timm.create_model(name, pretrained=False, out_indices=(0,), **create_kwargs)
            plain = timm.create_model(name, pretrained=False, **plain_kwargs)
    except Exception:  # a model that cannot be built on meta is probed on the CPU
        logger.debug("Probing %r on the meta device failed; probing on the CPU.", name, exc_info=True)
        features = timm.create_model(name, pretrained=False, out_indices=(0,), **create_kwargs)
        plain = timm.create_model(name, pretrained=False, **plain_kwargs)
    wrapper_is_nchw = type(features).__name__ == "FeatureGetterNet"
    channels_last = getattr(plain, "output_fmt", "NCHW") == "NHWC" and not wrapper_is_nchw
    return [dict(stage) for stage in features.feature_info.info], channels_last


class _TimmLoadReport(logging.Handler):
    """Collect the missing / unexpected keys timm logs while it loads pretrained weights into a feature extractor."""

    _LOGGER = "timm.models._builder"
    _PATTERN = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading")

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self._saved_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        match = self._PATTERN.match(record.getMessage())
        if match:
            keys = [key for key in match.group(2).split(", ") if key]
            (self.missing if match.group(1) == "Missing" else self.unexpected).extend(keys)

    def __enter__(self) -> "_TimmLoadReport":
        source = logging.getLogger(self._LOGGER)
        self._saved_level = source.level
        if source.getEffectiveLevel() > logging.INFO:
            source.setLevel(logging.INFO)
        source.addHandler(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        source = logging.getLogger(self._LOGGER)
        source.removeHandler(self)
        source.setLevel(self._saved_level)


def _has_config_file(path_or_repo: str, kwargs: dict[str, Any]) -> bool:
    from bestiary.hub import resolve_file

    options = HubOptions(
        revision=kwargs.get("revision"),
        cache_dir=kwargs.get("cache_dir"),
        local_files_only=kwargs.get("local_files_only", False),
        token=kwargs.get("token"),
        subfolder=kwargs.get("subfolder", "") or "",
    )
    if "/" not in path_or_repo:
        return False
    try:
        return resolve_file(path_or_repo, "config.json", options, required=False) is not None
    except Exception:
        return False


__all__ = ["TimmBackbone", "import_timm"]
