"""Configuration of DPR encoders and readers (imports no torch)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError


class DPRConfig(Config):
    """DPR configuration: a BERT encoder's fields plus ``projection_dim`` (transformers' names and defaults).

    ``projection_dim`` > 0 adds a linear projection of the first token's
    state (``encode_proj``); 0 uses the state itself as the embedding.
    """

    model_type: ClassVar[str] = "dpr"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    projection_dim: int = 0
    is_decoder: bool = False
    add_cross_attention: bool = False

    @model_validator(mode="before")
    @classmethod
    def _check_position_embedding_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("position_embedding_type", "absolute")
            if kind not in (None, "absolute"):
                raise ConfigError(
                    f"position_embedding_type={kind!r} is not supported by {cls.__name__}: only 'absolute' "
                    "position embeddings are implemented."
                )
        return data

    @model_validator(mode="after")
    def _check_sizes(self) -> "DPRConfig":
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"DPRConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"DPRConfig: hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.projection_dim < 0:
            raise ConfigError(f"DPRConfig.projection_dim must be 0 (no projection) or positive, got {self.projection_dim}.")
        if self.is_decoder or self.add_cross_attention:
            raise ConfigError("DPRConfig: is_decoder and add_cross_attention must be False; DPR models are encoders.")
        return self

