"""Configuration of BERT encoders (imports no torch)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError


class BertConfig(Config):
    """BERT encoder configuration, with transformers' field names and defaults."""

    model_type: ClassVar[str] = "bert"

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
    use_cache: bool = True
    classifier_dropout: float | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    @model_validator(mode="before")
    @classmethod
    def _check_position_embedding_type(cls, data: Any) -> Any:
        # Older configs carry "position_embedding_type"; only absolute positions exist in this family.
        if isinstance(data, dict):
            kind = data.get("position_embedding_type", "absolute")
            if kind not in (None, "absolute"):
                raise ConfigError(
                    f"position_embedding_type={kind!r} is not supported by bestiary's {cls.__name__}: only "
                    "'absolute' position embeddings are implemented. Use a checkpoint trained with absolute "
                    "positions, or remove the key if it was set by mistake."
                )
        return data

    @model_validator(mode="after")
    def _check_sizes(self) -> "BertConfig":
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads}); change one of them."
            )
        if self.add_cross_attention:
            raise ConfigError(
                f"{type(self).__name__}.add_cross_attention=True (BERT as the decoder of an encoder-decoder) is not "
                "supported by bestiary; set it to False."
            )
        return self

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads
