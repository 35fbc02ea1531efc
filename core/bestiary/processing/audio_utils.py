"""Audio decoding and conversion helpers for feature extractors.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 and
more) and resampling through librosa; both are imported on first use, so
importing this module costs only numpy.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from bestiary.errors import ProcessingError

logger = logging.getLogger(__name__)


def decode_audio(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[np.ndarray, int]:
    """Return ``(samples, sampling_rate)`` of an audio file path or the bytes of an audio file.

    ``samples`` is float32 in [-1, 1] shaped (frames, channels). Raises
    :class:`ProcessingError` naming the file when it is missing or unreadable.
    """
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ProcessingError(
            "Decoding audio files needs the soundfile package: pip install 'bestiary[audio]'."
        ) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = f"the audio bytes ({len(source)} bytes)"
        handle: Any = io.BytesIO(bytes(source))
    else:
        path = Path(os.fspath(source)).expanduser()
        name = f"audio file {str(path)!r}"
        if not path.is_file():
            raise ProcessingError(f"The {name} does not exist. Pass an existing path, bytes or an array.")
        handle = str(path)
    try:
        samples, sampling_rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise ProcessingError(
            f"Cannot decode {name}: {exc}. Supported formats include WAV, FLAC, OGG and MP3."
        ) from None
    return samples, int(sampling_rate)


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Return float samples: integer PCM is scaled to [-1, 1], floats are returned as they are."""
    if samples.dtype.kind == "f":
        return samples
    if samples.dtype.kind == "i":
        return samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
    if samples.dtype.kind == "u":
        middle = float(2 ** (8 * samples.dtype.itemsize - 1))
        return (samples.astype(np.float32) - middle) / middle
    if samples.dtype.kind == "b":
        return samples.astype(np.float32)
    raise ProcessingError(f"Audio samples must be numbers; got an array of dtype {samples.dtype}.")


def to_mono(samples: np.ndarray, channel_axis: int, *, name: str = "audio") -> np.ndarray:
    """Return a 1-D waveform, averaging the channels along ``channel_axis`` (logged) when there are several."""
    channels = samples.shape[channel_axis]
    if channels == 1:
        return np.take(samples, 0, axis=channel_axis)
    logger.info("Downmixing %s from %d channels to mono by averaging them.", name, channels)
    return samples.mean(axis=channel_axis, dtype=samples.dtype if samples.dtype.kind == "f" else np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, *, name: str = "audio") -> np.ndarray:
    """Return ``samples`` resampled from ``orig_sr`` to ``target_sr`` Hz with librosa (logged at INFO)."""
    if orig_sr == target_sr:
        return samples
    try:
        import librosa
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ProcessingError(
            f"Resampling {name} from {orig_sr} Hz to {target_sr} Hz needs librosa: pip install 'bestiary[audio]'."
        ) from exc
    logger.info("Resampling %s from %d Hz to %d Hz.", name, orig_sr, target_sr)
    return librosa.resample(samples, orig_sr=orig_sr, target_sr=target_sr)
