"""Configuration of Llama-family decoders (imports no torch)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError


class LlamaConfig(Config):
    """Llama decoder configuration, with transformers' field names and defaults."""

    model_type: ClassVar[str] = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    bos_token_id: int | list[int] | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_parameters: dict[str, Any] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fold_rope_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            from bestiary.nn.rope_params import normalise_rope_parameters

            data = dict(data)
            normalise_rope_parameters(data)
        return data

    @model_validator(mode="after")
    def _fill_derived(self) -> "LlamaConfig":
        if self.num_key_value_heads is None:
            self.__dict__["num_key_value_heads"] = self.num_attention_heads
        if self.head_dim is None:
            self.__dict__["head_dim"] = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["rope_theta"] = (self.rope_parameters or {}).get("rope_theta", 10000.0)
        return data
