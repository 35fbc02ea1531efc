"""``SpeechProcessor``: an audio feature extractor and a tokenizer saved and called together.

A speech family subclasses it and names its two classes::

    class WhisperProcessor(SpeechProcessor):
        transformers_class = "WhisperProcessor"
        feature_extractor_class = WhisperFeatureExtractor
        tokenizer_class = WhisperTokenizer

It is saved as transformers 5 does: ``processor_config.json`` with the
feature extractor's settings nested under ``"feature_extractor"``, beside the
tokenizer files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from bestiary.errors import ProcessingError
from bestiary.processing.base import PROCESSOR_CONFIG_NAME, atomic_write_text
from bestiary.processing.batch_feature import BatchFeature

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
_IGNORED_LOADING_KEYS = ("trust_remote_code", "use_fast", "_from_auto")


class SpeechProcessor:
    """Audio to model inputs with a feature extractor; text to and from ids with a tokenizer."""

    transformers_class: ClassVar[str] = ""
    feature_extractor_class: ClassVar[type]
    tokenizer_class: ClassVar[type]
    pad_text_batches: ClassVar[bool] = False

    def __init__(self, feature_extractor: Any, tokenizer: Any) -> None:
        if not isinstance(feature_extractor, self.feature_extractor_class):
            raise ProcessingError(
                f"{type(self).__name__} needs a {self.feature_extractor_class.__name__}, "
                f"got {type(feature_extractor).__name__}."
            )
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        """Names of the inputs this processor produces."""
        return list(self.feature_extractor.model_input_names)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "SpeechProcessor":
        """Load the feature extractor settings and the tokenizer of a folder or hub repo."""
        hub = {key: kwargs.pop(key) for key in HUB_KEYS if key in kwargs}
        for key in _IGNORED_LOADING_KEYS:
            kwargs.pop(key, None)
        feature_extractor = cls.feature_extractor_class.from_pretrained(path_or_repo, **hub)
        tokenizer = cls.tokenizer_class.from_pretrained(path_or_repo, **hub, **kwargs)
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
        return f"{type(self).__name__}(feature_extractor={self.feature_extractor!r}, tokenizer={self.tokenizer!r})"

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
            raise ProcessingError(f"{type(self).__name__} needs audio=, text=, or both.")
        features = None
        if audio is not None:
            features = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        if text is None:
            return features
        padding = self.pad_text_batches and not isinstance(text, str)
        encoding = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        if features is None:
            return encoding
        features["labels"] = encoding["input_ids"]
        return features

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)
