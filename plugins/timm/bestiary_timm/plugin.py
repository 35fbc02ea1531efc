"""Hook implementations of the bestiary-timm plugin (imports neither torch nor timm)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """The ``timm_backbone`` model type: any timm model with feature extraction, as a backbone."""
    return [
        ArchitectureSpec(
            model_type="timm_backbone",
            config="bestiary_timm.configuration_timm_backbone:TimmBackboneConfig",
            models={"backbone": "bestiary_timm.modeling_timm_backbone:TimmBackbone"},
            description="Any timm model (features_only) as a backbone",
        )
    ]
