"""Configuration of Mistral decoders (imports no torch)."""

from __future__ import annotations

from typing import ClassVar

from bestiary_text.configuration_llama import LlamaConfig


class MistralConfig(LlamaConfig):
    """Mistral: a Llama decoder with an optional sliding attention window."""

    model_type: ClassVar[str] = "mistral"

    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    sliding_window: int | None = 4096

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of layer ``layer_idx`` (None for full attention)."""
        return self.sliding_window
