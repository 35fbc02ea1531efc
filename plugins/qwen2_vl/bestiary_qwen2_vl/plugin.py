"""Hook implementations of the bestiary-qwen2-vl plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_PACKAGE = "bestiary_qwen2_vl"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """Qwen2-VL: the base model, the generation head (image-text-to-text, vision2seq) and its processors."""
    modeling = f"{_PACKAGE}.modeling_qwen2_vl"
    return [
        ArchitectureSpec(
            model_type="qwen2_vl",
            config=f"{_PACKAGE}.configuration_qwen2_vl:Qwen2VLConfig",
            models={
                "model": f"{modeling}:Qwen2VLModel",
                "image-text-to-text": f"{modeling}:Qwen2VLForConditionalGeneration",
                "vision2seq": f"{modeling}:Qwen2VLForConditionalGeneration",
            },
            tokenizer="bestiary.processing.tokenization:Tokenizer",
            image_processor=f"{_PACKAGE}.image_processing_qwen2_vl:Qwen2VLImageProcessor",
            processor=f"{_PACKAGE}.processing_qwen2_vl:Qwen2VLProcessor",
            description="Qwen2-VL: images and videos with text in, text out (M-RoPE, dynamic resolution)",
        )
    ]
