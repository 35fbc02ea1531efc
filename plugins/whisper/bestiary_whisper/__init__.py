"""Whisper for bestiary: speech recognition and translation with timestamps.

Import classes from their modules (``bestiary_whisper.modeling_whisper``,
``bestiary_whisper.feature_extraction_whisper``, ...); this package itself
imports nothing heavy.
"""
