"""Hook implementations of the bestiary-whisper plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_P = "bestiary_whisper"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """Whisper: encoder-decoder speech recognition, and its encoder as an audio classifier."""
    return [
        ArchitectureSpec(
            model_type="whisper",
            config=f"{_P}.configuration_whisper:WhisperConfig",
            models={
                "model": f"{_P}.modeling_whisper:WhisperModel",
                "speech-seq2seq": f"{_P}.modeling_whisper:WhisperForConditionalGeneration",
                "audio-classification": f"{_P}.modeling_whisper:WhisperForAudioClassification",
            },
            tokenizer=f"{_P}.tokenization_whisper:WhisperTokenizer",
            feature_extractor=f"{_P}.feature_extraction_whisper:WhisperFeatureExtractor",
            processor=f"{_P}.processing_whisper:WhisperProcessor",
            description="Whisper encoder-decoder speech recognition and translation",
        )
    ]
