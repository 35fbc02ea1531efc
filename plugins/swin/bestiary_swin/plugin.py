"""Hook implementations of the bestiary-swin plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_MODELING = "bestiary_swin.modeling_swin"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """Swin Transformer (v1)."""
    return [
        ArchitectureSpec(
            model_type="swin",
            config="bestiary_swin.configuration_swin:SwinConfig",
            models={
                "model": f"{_MODELING}:SwinModel",
                "image-classification": f"{_MODELING}:SwinForImageClassification",
                "masked-image-modeling": f"{_MODELING}:SwinForMaskedImageModeling",
                "backbone": f"{_MODELING}:SwinBackbone",
            },
            image_processor="bestiary_swin.image_processing_swin:SwinImageProcessor",
            description="Swin Transformer: shifted-window hierarchical vision transformer",
        )
    ]
