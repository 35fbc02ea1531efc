"""``WhisperProcessor``: the feature extractor and the tokenizer of a Whisper checkpoint together."""

from __future__ import annotations

from typing import Any

from bestiary.processing.speech_processor import SpeechProcessor
from bestiary_whisper.feature_extraction_whisper import WhisperFeatureExtractor
from bestiary_whisper.tokenization_whisper import WhisperTokenizer


class WhisperProcessor(SpeechProcessor):
    """Audio to ``input_features`` with :class:`WhisperFeatureExtractor`, text to and from ids with :class:`WhisperTokenizer`."""

    transformers_class = "WhisperProcessor"
    feature_extractor_class = WhisperFeatureExtractor
    tokenizer_class = WhisperTokenizer

    def get_decoder_prompt_ids(self, task: str | None = None, language: str | None = None, no_timestamps: bool = True) -> list:
        """:meth:`WhisperTokenizer.get_decoder_prompt_ids`."""
        return self.tokenizer.get_decoder_prompt_ids(task=task, language=language, no_timestamps=no_timestamps)

    def get_prompt_ids(self, text: str, return_tensors: str | None = "np") -> Any:
        """:meth:`WhisperTokenizer.get_prompt_ids`."""
        return self.tokenizer.get_prompt_ids(text, return_tensors=return_tensors)
