"""Hook implementations of the bestiary-sam plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """SAM: one model class serving the "mask-generation" and "model" tasks, and its processors."""
    return [
        ArchitectureSpec(
            model_type="sam",
            config="bestiary_sam.configuration_sam:SamConfig",
            models={
                "model": "bestiary_sam.modeling_sam:SamModel",
                "mask-generation": "bestiary_sam.modeling_sam:SamModel",
            },
            image_processor="bestiary_sam.image_processing_sam:SamImageProcessor",
            processor="bestiary_sam.processing_sam:SamProcessor",
            description="Segment Anything: promptable masks from points, boxes and masks; segment everything",
        )
    ]
