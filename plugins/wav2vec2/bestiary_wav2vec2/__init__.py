"""Wav2Vec2 for bestiary: CTC speech recognition and audio classification from raw waveforms.

Import classes from their modules (``bestiary_wav2vec2.modeling_wav2vec2``,
``bestiary_wav2vec2.tokenization_wav2vec2``, ...); this package itself imports
nothing heavy.
"""
