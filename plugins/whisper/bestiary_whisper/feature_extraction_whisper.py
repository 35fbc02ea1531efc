"""``WhisperFeatureExtractor``: 30 s windows of log-mel spectrogram, computed in torch.

Audio is decoded, downmixed and resampled to 16 kHz by the core
:class:`~bestiary.processing.feature_extraction.FeatureExtractor`, padded
with silence (or cut) to 30 s, then turned into a log-mel spectrogram:

1. a 400-point STFT with a Hann window every 160 samples (10 ms), the
   last frame dropped, magnitudes squared;
2. librosa's Slaney-normalised mel filters (0-8 kHz);
3. ``log10`` of the energies floored at 1e-10, clamped to 8 below each
   recording's maximum, then shifted and scaled as ``(x + 4) / 4``.

The whole batch is computed at once, on any torch device.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import numpy as np
from pydantic import model_validator

from bestiary.errors import ProcessingError
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.feature_extraction import FeatureExtractor, padding_strategy

logger = logging.getLogger(__name__)

# Keys transformers writes that are derived from other settings (recomputed, never read back).
_DERIVED_KEYS = ("n_samples", "nb_max_frames", "mel_filters")


@functools.lru_cache(maxsize=8)
def mel_filters(sampling_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Return the [n_mels, 1 + n_fft // 2] Slaney mel filter bank (0 to 8 kHz) as float32."""
    import librosa

    bank = librosa.filters.mel(
        sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=8000.0, htk=False, norm="slaney", dtype=np.float64
    )
    return bank.astype(np.float32)


class WhisperFeatureExtractor(FeatureExtractor):
    """Log-mel spectrogram features for Whisper, equal to transformers' within 1e-4.

    Calling it returns ``input_features`` shaped [batch, feature_size, 3000]
    (30 s at 100 frames per second) and, on request, an ``attention_mask``
    over those frames. ``padding=False``/``"longest"`` with
    ``truncation=False`` keeps recordings longer than 30 s whole, for
    long-form transcription.
    """

    transformers_class: ClassVar[str | None] = "WhisperFeatureExtractor"
    model_input_names: ClassVar[tuple[str, ...]] = ("input_features",)
    default_padding: ClassVar[bool | str] = "max_length"
    default_truncation: ClassVar[bool] = True

    feature_size: int = 80
    sampling_rate: int = 16000
    hop_length: int = 160
    chunk_length: int = 30
    n_fft: int = 400
    padding_value: float = 0.0
    dither: float = 0.0
    return_attention_mask: bool = False
    do_normalize: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key not in _DERIVED_KEYS}
        return data

    def check_settings(self) -> None:
        """Raise when the STFT settings cannot work together."""
        super().check_settings()
        if self.hop_length <= 0 or self.n_fft <= 0 or self.chunk_length <= 0:
            raise ProcessingError(
                f"hop_length ({self.hop_length}), n_fft ({self.n_fft}) and chunk_length ({self.chunk_length}) "
                "must be positive."
            )

    @property
    def n_samples(self) -> int:
        """Samples in one window (``chunk_length`` seconds)."""
        return self.chunk_length * self.sampling_rate

    @property
    def nb_max_frames(self) -> int:
        """Mel frames in one window."""
        return self.n_samples // self.hop_length

    @property
    def mel_filters(self) -> np.ndarray:
        """The [feature_size, 1 + n_fft // 2] mel filter bank."""
        return mel_filters(self.sampling_rate, self.n_fft, self.feature_size)

    def to_dict(self) -> dict[str, Any]:
        """The settings as transformers writes them, with the derived ``n_samples`` and ``nb_max_frames``."""
        data = super().to_dict()
        data["n_samples"] = self.n_samples
        data["nb_max_frames"] = self.nb_max_frames
        return dict(sorted(data.items()))

    # -- calling -------------------------------------------------------------------------------
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
        device: Any = None,
        do_normalize: bool | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Return ``input_features`` (and optionally ``attention_mask``) for one recording or a batch.

        ``audio`` is anything the core feature extractor accepts (arrays with
        ``sampling_rate=``, file paths, bytes, ``{"array", "sampling_rate"}``
        dicts). By default every recording is padded or cut to 30 s
        (``padding="max_length"``, ``truncation=True``). ``device`` (for
        example ``"cuda"``) is where the spectrogram is computed; with
        ``return_tensors="pt"`` the features stay there.
        """
        if do_normalize is not None:
            overrides["do_normalize"] = do_normalize
        extractor = self.with_overrides(**overrides) if overrides else self
        extractor.check_settings()
        waveforms = extractor.prepare_audio(audio, sampling_rate)
        return extractor._extract(
            waveforms,
            padding=self.default_padding if padding is None else padding,
            max_length=max_length,
            truncation=self.default_truncation if truncation is None else truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=extractor.return_attention_mask
            if return_attention_mask is None
            else return_attention_mask,
            return_tensors=return_tensors,
            device=device,
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
        return self._extract(
            waveforms,
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask,
            return_tensors=return_tensors,
            device=None,
        )

    def _extract(
        self,
        waveforms: list[np.ndarray],
        *,
        padding: bool | str,
        max_length: int | None,
        truncation: bool,
        pad_to_multiple_of: int | None,
        return_attention_mask: bool,
        return_tensors: str | None,
        device: Any,
    ) -> BatchFeature:
        strategy = padding_strategy(padding, max_length or self.n_samples)
        values, masks = self.pad(
            waveforms,
            padding=strategy,
            max_length=max_length or self.n_samples,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        if self.do_normalize:
            values = self.normalize(values, masks, mask_padding=True)
        features = self.log_mel_spectrogram(values, device=device)
        data: dict[str, Any] = {}
        if return_tensors == "pt":
            import torch

            data["input_features"] = torch.stack(features) if _same_shape(features) else features
        else:
            data["input_features"] = [feature.cpu().numpy() for feature in features]
        if return_attention_mask:
            frame_masks = []
            for mask in masks:
                frames = mask[:: self.hop_length]
                if len(mask) % self.hop_length:
                    frames = frames[:-1]
                frame_masks.append(frames)
            data["attention_mask"] = frame_masks
        return BatchFeature(data, tensor_type=return_tensors)

    def log_mel_spectrogram(self, waveforms: list[np.ndarray], device: Any = None) -> list[Any]:
        """Return one [feature_size, frames] torch tensor per waveform; equal lengths are computed as one batch."""
        import torch

        device = torch.device(device) if device is not None else torch.device("cpu")
        results: list[Any] = [None] * len(waveforms)
        by_length: dict[int, list[int]] = {}
        for index, waveform in enumerate(waveforms):
            if len(waveform) <= self.n_fft // 2:
                raise ProcessingError(
                    f"Audio input {index} has {len(waveform)} samples; the spectrogram needs more than "
                    f"{self.n_fft // 2} (pad it, or keep the default padding to {self.chunk_length} s)."
                )
            by_length.setdefault(len(waveform), []).append(index)
        window = torch.hann_window(self.n_fft, device=device)
        bank = torch.from_numpy(self.mel_filters).to(device)
        for indices in by_length.values():
            batch = torch.from_numpy(np.stack([waveforms[i] for i in indices]).astype(np.float32)).to(device)
            if self.dither:
                batch = batch + self.dither * torch.randn_like(batch)
            spectrum = torch.stft(batch, self.n_fft, self.hop_length, window=window, return_complex=True)
            power = (spectrum[..., :-1].abs() ** 2).contiguous()
            log_mel = torch.matmul(bank, power).clamp(min=1e-10).log10()
            ceiling = log_mel.amax(dim=(1, 2), keepdim=True)
            log_mel = (torch.maximum(log_mel, ceiling - 8.0) + 4.0) / 4.0
            for row, index in enumerate(indices):
                results[index] = log_mel[row]
        return results


def _same_shape(tensors: list[Any]) -> bool:
    return len({tuple(t.shape) for t in tensors}) == 1
