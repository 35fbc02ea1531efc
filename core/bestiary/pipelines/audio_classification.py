"""The "audio-classification" pipeline: the top-k labels of an audio clip, with scores.

Inputs are what the ASR pipeline takes: file paths, file bytes,
``{"array" | "raw", "sampling_rate"}`` or ``{"path" | "bytes"}`` dicts, or
arrays/tensors with ``sampling_rate=`` (a raw array without a sampling rate
is an error). Clips are downmixed to mono and resampled to the model's rate
(both logged). Scores are a softmax over the logits for single-label
models, a sigmoid for multi-label ones and the raw logits for regression
(``function_to_apply`` overrides the choice), as in transformers. A clip
gives a list of ``{"label", "score"}``, best first, the ``top_k`` best (5 by
default, at most the number of labels); a list of clips gives one list per
clip. Clips of a batch are padded together by the feature extractor.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines._scores import scores_from_logits, top_labels
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

FUNCTIONS = ("softmax", "sigmoid", "none")
DEFAULT_TOP_K = 5


class AudioClassificationPipeline(Pipeline):
    """Classify audio clips with an audio-classification model (Wav2Vec2, Whisper's encoder, ...).

    Call arguments: ``top_k`` (int; None for every label),
    ``function_to_apply`` ("softmax", "sigmoid", "none") and
    ``sampling_rate`` (of raw arrays).
    """

    task: ClassVar[str] = "audio-classification"
    needs: ClassVar[tuple[str, ...]] = ("feature_extractor",)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Check the arguments once per call and route them to the three steps."""
        unknown = set(params) - {"top_k", "function_to_apply", "sampling_rate"}
        if unknown:
            raise TypeError(
                f"audio-classification got unknown arguments {sorted(unknown)}; it takes top_k, "
                "function_to_apply and sampling_rate."
            )
        top_k = params.get("top_k", DEFAULT_TOP_K)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ProcessingError(f"top_k must be a positive integer or None (every label), got {top_k!r}.")
        function = params.get("function_to_apply")
        if function is not None:
            function = str(getattr(function, "value", function)).lower()
            if function not in FUNCTIONS:
                raise ProcessingError(f"function_to_apply={function!r} is not valid; use one of {', '.join(FUNCTIONS)}.")
        return {"sampling_rate": params.get("sampling_rate")}, {}, {"top_k": top_k, "function_to_apply": function}

    def preprocess(self, item: Any, sampling_rate: int | None = None) -> dict[str, Any]:
        """Decode, downmix and resample one clip (features are computed per batch in :meth:`collate`)."""
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if isinstance(item, (np.ndarray, list, tuple)):
            if sampling_rate is None:
                raise ProcessingError(
                    "The sampling rate of a raw audio array is unknown: pass sampling_rate=<Hz> to the pipeline "
                    f"call, or {{'array': samples, 'sampling_rate': rate}} (the model expects "
                    f"{self.feature_extractor.sampling_rate} Hz). bestiary does not guess it."
                )
            item = {"array": np.asarray(item), "sampling_rate": sampling_rate}
        return {"waveform": self.feature_extractor.prepare_audio(item, sampling_rate)[0]}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Compute the features of a batch of clips, padded together."""
        waveforms = [item["waveform"] for item in items]
        extractor = self.feature_extractor
        padding = True if extractor.default_padding is False else extractor.default_padding
        features = extractor(waveforms, sampling_rate=extractor.sampling_rate, padding=padding, return_tensors="pt")
        dtype = getattr(self.model, "dtype", None)
        batch = {}
        for key, value in features.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            batch[key] = value
        return batch

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the classifier on a batch of clips."""
        name = getattr(self.model, "main_input_name", "input_values")
        inputs = {name: batch[name]}
        if "attention_mask" in batch and name == "input_values":
            inputs["attention_mask"] = batch["attention_mask"]
        return {"logits": self.model(**inputs).logits}

    def postprocess(
        self, output: dict[str, Any], top_k: int | None = DEFAULT_TOP_K, function_to_apply: str | None = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best labels with their scores, best first."""
        scores = scores_from_logits(output["logits"][0], self.model.config, function_to_apply)
        return top_labels(scores, self.model.config, top_k)


__all__ = ["AudioClassificationPipeline"]
