"""bestiary-qwen2-vl: the Qwen2-VL vision-language family (config, model, processors).

Importing this package is cheap; the modeling and processing modules import
torch when they are imported themselves.
"""
