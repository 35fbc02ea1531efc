"""``FeatureExtractor``: turn audio into padded model inputs.

Audio arrives as numpy arrays or torch tensors with an explicit sampling
rate, as file paths or file bytes (decoded with soundfile), or as the
``{"array", "sampling_rate"}`` dicts of Hugging Face datasets. Every input
becomes a mono float32 waveform at the extractor's ``sampling_rate``
(resampled with librosa when needed), then the batch is truncated and padded
the way transformers' ``SequenceFeatureExtractor`` does it.

The base class returns the waveforms themselves as ``input_values``, with
transformers' ``Wav2Vec2FeatureExtractor`` arithmetic (optional zero-mean,
unit-variance normalization), which is what wav2vec2, HuBERT, WavLM and
similar models take. A model that computes features (Whisper's log-mel
spectrogram) overrides :meth:`FeatureExtractor._preprocess`, calling
:meth:`FeatureExtractor.pad` on the waveforms and then its own transform.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import field_validator

from bestiary.errors import ProcessingError
from bestiary.processing.audio_utils import decode_audio, pcm_to_float, resample, to_mono
from bestiary.processing.base import Preprocessor
from bestiary.processing.batch_feature import BatchFeature

logger = logging.getLogger(__name__)

PaddingStrategy = Literal["longest", "max_length", "do_not_pad"]


def padding_strategy(padding: bool | str | None, max_length: int | None) -> PaddingStrategy:
    """Return the padding strategy named by ``padding`` (True = "longest", False/None = "do_not_pad")."""
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    value = str(getattr(padding, "value", padding))
    if value not in ("longest", "max_length", "do_not_pad"):
        raise ProcessingError(f"padding={padding!r} is not valid; use True/'longest', 'max_length' or False.")
    if value == "max_length" and max_length is None:
        raise ProcessingError("padding='max_length' needs max_length=<number of samples>.")
    return value  # type: ignore[return-value]


def round_up(length: int, multiple: int | None) -> int:
    """Return ``length`` rounded up to a multiple of ``multiple`` (unchanged when ``multiple`` is None)."""
    return length if not multiple else math.ceil(length / multiple) * multiple


def zero_mean_unit_var_norm(
    values: Sequence[np.ndarray], lengths: Sequence[int] | None = None, padding_value: float = 0.0
) -> list[np.ndarray]:
    """Return each array shifted and scaled to zero mean and unit variance, like transformers' Wav2Vec2.

    With ``lengths``, statistics come from each array's first ``length``
    samples and the rest is reset to ``padding_value``.
    """
    normed = []
    for index, vector in enumerate(values):
        if lengths is None:
            normed.append((vector - vector.mean()) / np.sqrt(vector.var() + 1e-7))
            continue
        length = int(lengths[index])
        result = (vector - vector[:length].mean()) / np.sqrt(vector[:length].var() + 1e-7)
        if length < result.shape[0]:
            result[length:] = padding_value
        normed.append(result)
    return normed


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _tensor_to_numpy(value: Any) -> np.ndarray:
    value = value.detach().cpu()
    if value.is_floating_point() and value.element_size() < 4:
        value = value.float()
    return value.numpy()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


class FeatureExtractor(Preprocessor):
    """Audio feature extractor: decoding, resampling, padding, truncation and attention masks.

    Settings (fields) have transformers' names. By default it returns the
    padded waveforms as ``input_values`` (transformers' Wav2Vec2FeatureExtractor
    behaviour, written as that type when saved). Subclass it for models with
    their own features: re-declare the fields whose defaults differ, set
    ``transformers_class`` and ``model_input_names``, and override
    :meth:`_preprocess` (and ``default_padding`` / ``default_truncation`` if
    the model pads to a fixed length by default, as Whisper does).
    """

    type_key: ClassVar[str] = "feature_extractor_type"
    processor_key: ClassVar[str] = "feature_extractor"
    default_transformers_class: ClassVar[str] = "Wav2Vec2FeatureExtractor"
    model_input_names: ClassVar[tuple[str, ...]] = ("input_values", "attention_mask")
    default_padding: ClassVar[bool | str] = False
    default_truncation: ClassVar[bool] = False

    feature_size: int = 1
    sampling_rate: int = 16000
    padding_value: float = 0.0
    padding_side: Literal["right", "left"] = "right"
    return_attention_mask: bool = True
    do_normalize: bool = False

    @field_validator("sampling_rate", "feature_size")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive integer")
        return value

    # -- entry point ---------------------------------------------------------
    def __call__(
        self,
        audio: Any,
        *,
        sampling_rate: int | None = None,
        padding: bool | str | None = None,
        max_length: int | None = None,
        truncation: bool | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Return a :class:`BatchFeature` of model inputs for one recording or a batch.

        ``audio``: a 1-D array/tensor or list of floats (one recording), a 2-D
        array/tensor or a list (a batch), file paths, file bytes, or dicts with
        ``"array"`` (or ``"raw"``) and ``"sampling_rate"``, or ``"path"`` /
        ``"bytes"``. ``sampling_rate`` is the rate of raw arrays and is
        required for them; other rates are resampled to the extractor's.
        ``padding``: True/"longest", "max_length" (with ``max_length``) or
        False; ``truncation`` cuts to ``max_length``; both round
        ``max_length`` up to ``pad_to_multiple_of``. Any setting may be
        overridden for this call only.
        """
        extractor = self.with_overrides(**overrides) if overrides else self
        extractor.check_settings()
        waveforms = extractor.prepare_audio(audio, sampling_rate)
        return extractor._preprocess(
            waveforms,
            padding=self.default_padding if padding is None else padding,
            max_length=max_length,
            truncation=self.default_truncation if truncation is None else truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=extractor.return_attention_mask
            if return_attention_mask is None
            else return_attention_mask,
            return_tensors=return_tensors,
        )

    def _preprocess(
        self,
        waveforms: list[np.ndarray],
        *,
        padding: bool | str,
        max_length: int | None,
        truncation: bool,
        pad_to_multiple_of: int | None,
        return_attention_mask: bool,
        return_tensors: str | None,
    ) -> BatchFeature:
        """Pad and truncate the waveforms, normalize them when ``do_normalize``, and pack the outputs."""
        strategy = padding_strategy(padding, max_length)
        values, masks = self.pad(
            waveforms,
            padding=strategy,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        if self.do_normalize:
            values = self.normalize(values, masks, mask_padding=strategy != "do_not_pad" and return_attention_mask)
        data: dict[str, Any] = {self.model_input_names[0]: values}
        if return_attention_mask:
            data["attention_mask"] = masks
        return BatchFeature(data, tensor_type=return_tensors)

    def normalize(self, values: list[np.ndarray], masks: list[np.ndarray], *, mask_padding: bool) -> list[np.ndarray]:
        """Return zero-mean, unit-variance waveforms.

        As in transformers, statistics skip the padding only when an
        attention mask is returned; otherwise padding counts. With left
        padding the real samples are taken from the mask (transformers takes
        the first ones, which are padding).
        """
        if not mask_padding:
            return zero_mean_unit_var_norm(values, None, self.padding_value)
        if self.padding_side == "right":
            return zero_mean_unit_var_norm(values, [int(mask.sum()) for mask in masks], self.padding_value)
        normed = []
        for vector, mask in zip(values, masks):
            start = len(mask) - int(mask.sum())
            result = np.full_like(vector, self.padding_value)
            result[start:] = zero_mean_unit_var_norm([vector[start:]])[0]
            normed.append(result)
        return normed

    # -- padding ------------------------------------------------------------
    def pad(
        self,
        sequences: Sequence[np.ndarray],
        *,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return ``(sequences, attention_masks)`` truncated and padded along the first axis.

        Sequences are 1-D waveforms or (frames, feature_size) arrays. Padding
        uses ``padding_value`` on ``padding_side``; masks are int32, 1 on real
        frames. Float64 values come back as float32.
        """
        strategy = padding_strategy(padding, max_length)
        if truncation and max_length is None:
            raise ProcessingError("truncation=True needs max_length=<number of samples>.")
        sequences = [np.asarray(s) for s in sequences]
        if truncation:
            limit = round_up(max_length, pad_to_multiple_of)
            sequences = [s[:limit] for s in sequences]
        target = None
        if strategy == "longest":
            target = round_up(max(len(s) for s in sequences), pad_to_multiple_of)
        elif strategy == "max_length":
            target = round_up(max_length, pad_to_multiple_of)
        padded, masks = [], []
        for sequence in sequences:
            length = len(sequence)
            mask = np.ones(length, dtype=np.int32)
            if target is not None and length < target:
                extra = target - length
                before, after = (0, extra) if self.padding_side == "right" else (extra, 0)
                widths = [(before, after)] + [(0, 0)] * (sequence.ndim - 1)
                sequence = np.pad(sequence, widths, mode="constant", constant_values=self.padding_value)
                mask = np.pad(mask, (before, after))
            if sequence.dtype == np.float64:
                sequence = sequence.astype(np.float32)
            padded.append(sequence)
            masks.append(mask)
        return padded, masks

    # -- inputs ---------------------------------------------------------------
    def prepare_audio(self, audio: Any, sampling_rate: int | None = None) -> list[np.ndarray]:
        """Return every recording of ``audio`` as a 1-D float32 waveform at ``self.sampling_rate``."""
        items = self._split_batch(audio)
        return [self._load_one(item, sampling_rate, index, len(items)) for index, item in enumerate(items)]

    @staticmethod
    def _split_batch(audio: Any) -> list[Any]:
        if isinstance(audio, np.ndarray) or _is_torch_tensor(audio):
            if audio.ndim == 1:
                return [audio]
            if audio.ndim == 2:
                return list(audio)
            raise ProcessingError(
                f"An audio array must be 1-D (one recording) or 2-D (a batch); got shape {tuple(audio.shape)}. "
                "Pass a multi-channel recording as {'array': ..., 'sampling_rate': ...} to downmix it."
            )
        if isinstance(audio, (list, tuple)):
            if len(audio) == 0:
                raise ProcessingError("No audio was given (an empty list).")
            return [audio] if _is_number(audio[0]) else list(audio)
        return [audio]

    def _load_one(self, item: Any, sampling_rate: int | None, index: int, count: int) -> np.ndarray:
        name = "the audio" if count == 1 else f"audio input {index}"
        if isinstance(item, dict):
            samples, source_rate, name = self._from_dict(item, name)
        elif isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
            samples, source_rate = decode_audio(item)
            if not isinstance(item, (bytes, bytearray, memoryview)):
                name = f"audio file {os.fspath(item)!r}"
            samples = to_mono(samples, channel_axis=1, name=name)
        else:
            if sampling_rate is None:
                raise ProcessingError(
                    f"The sampling rate of {name} is unknown: pass sampling_rate=<Hz> with raw arrays "
                    f"(this extractor expects {self.sampling_rate} Hz). Files and "
                    "{'array': ..., 'sampling_rate': ...} dicts carry their own rate."
                )
            samples, source_rate = self._as_array(item, name), int(sampling_rate)
            if samples.ndim == 2:
                samples = to_mono(samples, channel_axis=int(np.argmin(samples.shape)), name=name)
        if samples.size == 0:
            raise ProcessingError(f"{name[0].upper()}{name[1:]} is empty (0 samples).")
        if not np.all(np.isfinite(samples)):
            raise ProcessingError(f"{name[0].upper()}{name[1:]} contains NaN or infinite samples.")
        samples = resample(samples, source_rate, self.sampling_rate, name=name)
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _from_dict(self, item: dict, name: str) -> tuple[np.ndarray, int, str]:
        if item.get("array") is not None or item.get("raw") is not None:
            array = item["array"] if item.get("array") is not None else item["raw"]
            rate = item.get("sampling_rate")
            if rate is None:
                raise ProcessingError(
                    f"The dict for {name} has audio samples but no 'sampling_rate' key; add it "
                    "(for example {'array': samples, 'sampling_rate': 16000})."
                )
            samples = self._as_array(array, name)
            if samples.ndim == 2:
                samples = to_mono(samples, channel_axis=int(np.argmin(samples.shape)), name=name)
            return samples, int(rate), name
        source = item.get("bytes") if item.get("bytes") is not None else item.get("path")
        if source is None:
            raise ProcessingError(
                f"The dict for {name} has none of the keys 'array', 'raw', 'bytes' or 'path' "
                f"(it has {sorted(item)})."
            )
        if isinstance(source, (str, os.PathLike)):
            name = f"audio file {os.fspath(source)!r}"
        samples, rate = decode_audio(source)
        return to_mono(samples, channel_axis=1, name=name), rate, name

    @staticmethod
    def _as_array(value: Any, name: str) -> np.ndarray:
        array = _tensor_to_numpy(value) if _is_torch_tensor(value) else np.asarray(value)
        if array.ndim not in (1, 2):
            raise ProcessingError(
                f"{name[0].upper()}{name[1:]} must be 1-D samples or 2-D (channels, samples); "
                f"got shape {tuple(array.shape)}."
            )
        return pcm_to_float(array)
