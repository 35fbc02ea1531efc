"""The core's own pipeline tasks, registered through the same hook as any plugin's."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import PipelineSpec

_P = "bestiary.pipelines"


@hookimpl
def bestiary_pipelines() -> list[PipelineSpec]:
    """Every task pipeline the core ships."""
    return [
        PipelineSpec(
            task="text-generation",
            pipeline=f"{_P}.text_generation:TextGenerationPipeline",
            model_tasks=("causal-lm",),
            description="Continue a text, or answer chat messages",
        ),
        PipelineSpec(
            task="feature-extraction",
            pipeline=f"{_P}.feature_extraction:FeatureExtractionPipeline",
            model_tasks=("model",),
            description="Token or pooled sentence embeddings",
        ),
        PipelineSpec(
            task="fill-mask",
            pipeline=f"{_P}.fill_mask:FillMaskPipeline",
            model_tasks=("masked-lm",),
            description="Predict masked tokens",
        ),
        PipelineSpec(
            task="question-answering",
            pipeline=f"{_P}.question_answering:QuestionAnsweringPipeline",
            model_tasks=("question-answering",),
            description="Extract an answer span from a context",
        ),
        PipelineSpec(
            task="text-classification",
            pipeline=f"{_P}.text_classification:TextClassificationPipeline",
            model_tasks=("sequence-classification",),
            aliases=("sentiment-analysis",),
            description="Classify a text",
        ),
        PipelineSpec(
            task="image-classification",
            pipeline=f"{_P}.image_classification:ImageClassificationPipeline",
            model_tasks=("image-classification",),
            description="Top-k labels for an image",
        ),
        PipelineSpec(
            task="image-feature-extraction",
            pipeline=f"{_P}.image_feature_extraction:ImageFeatureExtractionPipeline",
            model_tasks=("model", "backbone"),
            description="Pooled or per-token image features",
        ),
        PipelineSpec(
            task="mask-generation",
            pipeline=f"{_P}.mask_generation:MaskGenerationPipeline",
            model_tasks=("mask-generation",),
            description="Segment everything in an image with a grid of point prompts",
        ),
        PipelineSpec(
            task="keypoint-detection",
            pipeline=f"{_P}.keypoint_detection:KeypointDetectionPipeline",
            model_tasks=("keypoint-detection",),
            description="Keypoints, scores and descriptors per image",
        ),
        PipelineSpec(
            task="image-text-to-text",
            pipeline=f"{_P}.image_text_to_text:ImageTextToTextPipeline",
            model_tasks=("image-text-to-text",),
            description="Answer chat messages that contain images",
        ),
        PipelineSpec(
            task="automatic-speech-recognition",
            pipeline=f"{_P}.automatic_speech_recognition:AutomaticSpeechRecognitionPipeline",
            model_tasks=("speech-seq2seq", "ctc"),
            description="Transcribe speech, with timestamps where the model supports them",
        ),
        PipelineSpec(
            task="audio-classification",
            pipeline=f"{_P}.audio_classification:AudioClassificationPipeline",
            model_tasks=("audio-classification",),
            description="Top-k labels for an audio clip",
        ),
    ]
