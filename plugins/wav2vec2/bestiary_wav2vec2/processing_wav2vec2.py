"""``Wav2Vec2Processor``: the feature extractor and the CTC tokenizer of a Wav2Vec2 checkpoint together."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bestiary.errors import ProcessingError
from bestiary.processing.base import PROCESSOR_CONFIG_NAME, atomic_write_text
from bestiary.processing.batch_feature import BatchFeature
from bestiary_wav2vec2.feature_extraction_wav2vec2 import Wav2Vec2FeatureExtractor
from bestiary_wav2vec2.tokenization_wav2vec2 import Wav2Vec2CTCTokenizer

logger = logging.getLogger(__name__)

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")


class Wav2Vec2Processor:
    """Audio to ``input_values`` with :class:`Wav2Vec2FeatureExtractor`, CTC ids to text with :class:`Wav2Vec2CTCTokenizer`.

    Saved as transformers 5 does: ``processor_config.json`` with the feature
    extractor settings nested under ``"feature_extractor"``, plus the
    tokenizer files.
    """

    transformers_class = "Wav2Vec2Processor"

    def __init__(self, feature_extractor: Wav2Vec2FeatureExtractor, tokenizer: Wav2Vec2CTCTokenizer) -> None:
        if not isinstance(feature_extractor, Wav2Vec2FeatureExtractor):
            raise ProcessingError(
                f"Wav2Vec2Processor needs a Wav2Vec2FeatureExtractor, got {type(feature_extractor).__name__}."
            )
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    @property
    def model_input_names(self) -> list[str]:
        """Names of the inputs this processor produces."""
        return list(self.feature_extractor.model_input_names)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "Wav2Vec2Processor":
        """Load the feature extractor settings and the tokenizer of a folder or hub repo."""
        hub = {key: kwargs.pop(key) for key in HUB_KEYS if key in kwargs}
        for key in ("trust_remote_code", "use_fast", "_from_auto"):
            kwargs.pop(key, None)
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(path_or_repo, **hub)
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(path_or_repo, **hub, **kwargs)
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
        return f"Wav2Vec2Processor(feature_extractor={self.feature_extractor!r}, tokenizer={self.tokenizer!r})"

    def __call__(
        self,
        audio: Any = None,
        text: Any = None,
        *,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature | Any:
        """Features of ``audio``, ids of ``text``, or both (the ids then come as ``labels``)."""
        if audio is None and text is None:
            raise ProcessingError("Wav2Vec2Processor needs audio=, text=, or both.")
        features = None
        if audio is not None:
            features = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        if text is None:
            return features
        encoding = self.tokenizer(text, padding=not isinstance(text, str), return_tensors=return_tensors)
        if features is None:
            return encoding
        features["labels"] = encoding["input_ids"]
        return features

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Wav2Vec2CTCTokenizer.decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Wav2Vec2CTCTokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)
