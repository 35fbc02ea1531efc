"""Text decoder LLMs for bestiary: Llama, Mistral and Qwen2.

Import model classes from their modules (``bestiary_text.modeling_llama``);
this package itself imports nothing heavy.
"""
