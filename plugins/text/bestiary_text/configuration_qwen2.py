"""Configuration of Qwen2 decoders (imports no torch)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from bestiary.errors import ConfigError
from bestiary_text.configuration_llama import LlamaConfig

LAYER_TYPES = ("full_attention", "sliding_attention")


class Qwen2Config(LlamaConfig):
    """Qwen2: a Llama decoder with q/k/v biases and sliding windows on chosen layers."""

    model_type: ClassVar[str] = "qwen2"

    vocab_size: int = 151936
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    @model_validator(mode="after")
    def _fill_layer_types(self) -> "Qwen2Config":
        window = self.sliding_window if self.use_sliding_window else None
        self.__dict__["sliding_window"] = window
        if self.layer_types is None:
            self.__dict__["layer_types"] = [
                "sliding_attention" if window is not None and i >= self.max_window_layers else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types lists {len(self.layer_types)} layers but num_hidden_layers is {self.num_hidden_layers}."
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(f"layer_types has unknown values {unknown}; allowed: {LAYER_TYPES}.")
        return self

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of layer ``layer_idx`` (None for full attention)."""
        if self.layer_types[layer_idx] != "sliding_attention" or not self.use_sliding_window:
            return None
        return self.sliding_window
