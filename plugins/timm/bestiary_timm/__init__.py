"""timm backbones for bestiary.

Import classes from their modules (``bestiary_timm.modeling_timm_backbone``,
``bestiary_timm.configuration_timm_backbone``); this package itself imports
neither torch nor timm.
"""
