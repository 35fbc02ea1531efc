"""Integrations with other formats and runtimes (GGUF, ...)."""
