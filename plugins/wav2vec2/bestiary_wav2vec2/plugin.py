"""Hook implementations of the bestiary-wav2vec2 plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_P = "bestiary_wav2vec2"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """Wav2Vec2: a convolutional feature encoder and a transformer over raw 16 kHz audio."""
    return [
        ArchitectureSpec(
            model_type="wav2vec2",
            config=f"{_P}.configuration_wav2vec2:Wav2Vec2Config",
            models={
                "model": f"{_P}.modeling_wav2vec2:Wav2Vec2Model",
                "ctc": f"{_P}.modeling_wav2vec2:Wav2Vec2ForCTC",
                "audio-classification": f"{_P}.modeling_wav2vec2:Wav2Vec2ForSequenceClassification",
            },
            tokenizer=f"{_P}.tokenization_wav2vec2:Wav2Vec2CTCTokenizer",
            feature_extractor=f"{_P}.feature_extraction_wav2vec2:Wav2Vec2FeatureExtractor",
            processor=f"{_P}.processing_wav2vec2:Wav2Vec2Processor",
            description="Wav2Vec2 speech encoder with CTC and classification heads",
        )
    ]
