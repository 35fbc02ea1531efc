"""``Wav2Vec2FeatureExtractor``: raw 16 kHz waveforms, zero-mean unit-variance, padded with attention masks.

All the work (decoding, downmixing, resampling, padding, normalization) is
done by the core :class:`~bestiary.processing.feature_extraction.FeatureExtractor`;
this class only carries transformers' defaults for Wav2Vec2 checkpoints.
"""

from __future__ import annotations

from typing import ClassVar

from bestiary.processing.feature_extraction import FeatureExtractor


class Wav2Vec2FeatureExtractor(FeatureExtractor):
    """Waveforms as ``input_values``: normalized per recording (statistics over real samples only).

    ``return_attention_mask`` is False by default, as for the group-norm base
    checkpoints, which were trained on zero-padded batches; the layer-norm
    ("lv60") checkpoints set it to True in their ``preprocessor_config.json``.
    """

    transformers_class: ClassVar[str | None] = "Wav2Vec2FeatureExtractor"
    model_input_names: ClassVar[tuple[str, ...]] = ("input_values", "attention_mask")

    feature_size: int = 1
    sampling_rate: int = 16000
    padding_value: float = 0.0
    return_attention_mask: bool = False
    do_normalize: bool = True
