"""Swin Transformer for bestiary.

Import classes from their modules (``bestiary_swin.modeling_swin``,
``bestiary_swin.configuration_swin``, ``bestiary_swin.image_processing_swin``);
this package itself imports nothing heavy.
"""
