"""``WhisperProcessor``: the feature extractor and the tokenizer of a Whisper checkpoint together."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bestiary.errors import ProcessingError
from bestiary.processing.base import PROCESSOR_CONFIG_NAME, atomic_write_text
from bestiary.processing.batch_feature import BatchFeature
from bestiary_whisper.feature_extraction_whisper import WhisperFeatureExtractor
from bestiary_whisper.tokenization_whisper import WhisperTokenizer

logger = logging.getLogger(__name__)

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")


class WhisperProcessor:
    """Audio to ``input_features`` with :class:`WhisperFeatureExtractor`, text to and from ids with :class:`WhisperTokenizer`.

    Saved as transformers 5 does: ``processor_config.json`` with the feature
    extractor settings nested under ``"feature_extractor"``, plus the
    tokenizer files.
    """

    transformers_class = "WhisperProcessor"

    def __init__(self, feature_extractor: WhisperFeatureExtractor, tokenizer: WhisperTokenizer) -> None:
        if not isinstance(feature_extractor, WhisperFeatureExtractor):
            raise ProcessingError(
                f"WhisperProcessor needs a WhisperFeatureExtractor, got {type(feature_extractor).__name__}."
            )
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        """Names of the inputs this processor produces."""
        return list(self.feature_extractor.model_input_names)

    # -- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "WhisperProcessor":
        """Load the feature extractor settings and the tokenizer of a folder or hub repo."""
        hub = {key: kwargs.pop(key) for key in HUB_KEYS if key in kwargs}
        for key in ("trust_remote_code", "use_fast", "_from_auto"):
            kwargs.pop(key, None)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(path_or_repo, **hub)
        tokenizer = WhisperTokenizer.from_pretrained(path_or_repo, **hub, **kwargs)
        return cls(feature_extractor, tokenizer)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``processor_config.json`` as transformers writes it."""
        return {"feature_extractor": self.feature_extractor.to_dict(), "processor_class": self.transformers_class}

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write ``processor_config.json`` and the tokenizer files into ``save_directory``."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [Path(path) for path in self.tokenizer.save_pretrained(directory)]
        path = directory / PROCESSOR_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return [*written, path]

    def __repr__(self) -> str:
        return f"WhisperProcessor(feature_extractor={self.feature_extractor!r}, tokenizer={self.tokenizer!r})"

    # -- calling -------------------------------------------------------------------------------
    def __call__(
        self,
        audio: Any = None,
        text: Any = None,
        *,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature | Any:
        """Features of ``audio``, token ids of ``text``, or both (the ids then come as ``labels``)."""
        if audio is None and text is None:
            raise ProcessingError("WhisperProcessor needs audio=, text=, or both.")
        features = None
        if audio is not None:
            features = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        if text is None:
            return features
        encoding = self.tokenizer(text, return_tensors=return_tensors)
        if features is None:
            return encoding
        features["labels"] = encoding["input_ids"]
        return features

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`WhisperTokenizer.decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[Any]:
        """:meth:`WhisperTokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def get_decoder_prompt_ids(self, task: str | None = None, language: str | None = None, no_timestamps: bool = True) -> list:
        """:meth:`WhisperTokenizer.get_decoder_prompt_ids`."""
        return self.tokenizer.get_decoder_prompt_ids(task=task, language=language, no_timestamps=no_timestamps)

    def get_prompt_ids(self, text: str, return_tensors: str | None = "np") -> Any:
        """:meth:`WhisperTokenizer.get_prompt_ids`."""
        return self.tokenizer.get_prompt_ids(text, return_tensors=return_tensors)
