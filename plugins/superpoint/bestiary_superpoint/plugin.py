"""Hook implementations of the bestiary-superpoint plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec, PipelineSpec


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """SuperPoint: its config, the keypoint detection model and its image processor."""
    return [
        ArchitectureSpec(
            model_type="superpoint",
            config="bestiary_superpoint.configuration_superpoint:SuperPointConfig",
            models={"keypoint-detection": "bestiary_superpoint.modeling_superpoint:SuperPointForKeypointDetection"},
            image_processor="bestiary_superpoint.image_processing_superpoint:SuperPointImageProcessor",
            description="SuperPoint: keypoints, scores and descriptors from a grayscale image",
        )
    ]


@hookimpl
def bestiary_pipelines() -> list[PipelineSpec]:
    """Keypoint matching between image pairs: detect with a keypoint model, match descriptors."""
    return [
        PipelineSpec(
            task="keypoint-matching",
            pipeline="bestiary_superpoint.pipeline_keypoint_matching:KeypointMatchingPipeline",
            model_tasks=("keypoint-detection",),
            description="Matched point pairs between two images (mutual nearest neighbours with a ratio test)",
        )
    ]
