"""``Wav2Vec2Processor``: the feature extractor and the CTC tokenizer of a Wav2Vec2 checkpoint together."""

from __future__ import annotations

from bestiary.processing.speech_processor import SpeechProcessor
from bestiary_wav2vec2.feature_extraction_wav2vec2 import Wav2Vec2FeatureExtractor
from bestiary_wav2vec2.tokenization_wav2vec2 import Wav2Vec2CTCTokenizer


class Wav2Vec2Processor(SpeechProcessor):
    """Audio to ``input_values`` with :class:`Wav2Vec2FeatureExtractor`, CTC ids to text with :class:`Wav2Vec2CTCTokenizer`."""

    transformers_class = "Wav2Vec2Processor"
    feature_extractor_class = Wav2Vec2FeatureExtractor
    tokenizer_class = Wav2Vec2CTCTokenizer
    pad_text_batches = True
