"""Hook implementations: declarations only, so importing this module never imports torch."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec, PipelineSpec


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """The toy architecture: its config, its model per task, and its processor."""
    return [
        ArchitectureSpec(
            model_type="toy",
            config="bestiary_toy.configuration_toy:ToyConfig",
            models={
                "model": "bestiary_toy.modeling_toy:ToyModel",
                "sequence-classification": "bestiary_toy.modeling_toy:ToyForSequenceClassification",
            },
            tokenizer="bestiary_toy.processing_toy:ToyTokenizer",
            description="Bag-of-embeddings text classifier (a template)",
        )
    ]


@hookimpl
def bestiary_pipelines() -> list[PipelineSpec]:
    """A pipeline task of the plugin's own."""
    return [
        PipelineSpec(
            task="toy-scoring",
            pipeline="bestiary_toy.pipeline_toy:ToyScoringPipeline",
            model_tasks=("sequence-classification",),
            description="Score a text with the toy classifier",
        )
    ]
