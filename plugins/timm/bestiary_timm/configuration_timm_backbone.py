"""Configuration of timm backbones (imports neither torch nor timm)."""

from __future__ import annotations

from typing import Any, ClassVar

from bestiary.backbone import BackboneConfigMixin


class TimmBackboneConfig(BackboneConfigMixin):
    """A timm model used as a backbone, in transformers' ``timm_backbone`` format.

    ``backbone`` is a timm model name (``"resnet18"``, ``"vit_tiny_patch16_224"``,
    ...). The stages are timm's ``feature_info`` entries, known once the model
    is built; ``stage_names`` records them (written by the model, checked on
    reload). ``timm_model_kwargs`` are extra keyword arguments for
    ``timm.create_model`` (``img_size``, ``depths``, ...), saved so a reload
    builds the same architecture; transformers ignores the key.
    """

    model_type: ClassVar[str] = "timm_backbone"

    backbone: str | None = None
    num_channels: int = 3
    features_only: bool = True
    freeze_batch_norm_2d: bool = False
    output_stride: int | None = None
    stage_names: list[str] | None = None
    timm_model_kwargs: dict[str, Any] | None = None

    def known_stage_names(self) -> list[str] | None:
        """The stage names recorded by a built model, else None (then the model validates the selection)."""
        return self.stage_names
