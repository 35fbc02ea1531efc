"""Dense passage retrieval (DPR) for bestiary.

Import classes from their modules (``bestiary_dpr.modeling_dpr``,
``bestiary_dpr.tokenization_dpr``); this package itself imports nothing heavy.
"""
