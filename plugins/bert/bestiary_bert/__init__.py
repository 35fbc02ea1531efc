"""BERT encoders for bestiary.

Import classes from their modules (``bestiary_bert.modeling_bert``,
``bestiary_bert.configuration_bert``); this package itself imports nothing
heavy, so plugin discovery stays cheap.
"""
