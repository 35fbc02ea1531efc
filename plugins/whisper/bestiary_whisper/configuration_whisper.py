"""Configuration of Whisper models (imports no torch)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError


class WhisperConfig(Config):
    """Whisper encoder-decoder configuration, with transformers' field names and defaults.

    The defaults describe ``openai/whisper-tiny``. ``hidden_size``,
    ``num_hidden_layers`` and ``num_attention_heads`` are read-only aliases of
    ``d_model``, ``encoder_layers`` and ``encoder_attention_heads``.
    """

    model_type: ClassVar[str] = "whisper"

    vocab_size: int = 51865
    num_mel_bins: int = 80
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    encoder_ffn_dim: int = 1536
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    decoder_start_token_id: int = 50257
    use_cache: bool = True
    is_encoder_decoder: bool = True
    activation_function: str = "gelu"
    d_model: int = 384
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    max_source_positions: int = 1500
    max_target_positions: int = 448
    pad_token_id: int | None = 50256
    bos_token_id: int | list[int] | None = 50256
    eos_token_id: int | list[int] | None = 50256
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = [220, 50256]
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    apply_spec_augment: bool = False
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    median_filter_width: int = 7
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _check(self) -> "WhisperConfig":
        for name in ("d_model", "encoder_layers", "decoder_layers", "vocab_size", "num_mel_bins"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"WhisperConfig.{name} must be positive, got {getattr(self, name)}.")
        for heads_name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_name)
            if heads <= 0 or self.d_model % heads:
                raise ConfigError(
                    f"WhisperConfig.d_model ({self.d_model}) must be a multiple of {heads_name} ({heads})."
                )
        return self

    @property
    def hidden_size(self) -> int:
        """Alias of ``d_model``."""
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        """Alias of ``encoder_layers`` (the encoder is what audio classification stacks)."""
        return self.encoder_layers

    @property
    def num_attention_heads(self) -> int:
        """Alias of ``encoder_attention_heads``."""
        return self.encoder_attention_heads

    @property
    def input_stride(self) -> int:
        """Mel frames per encoder position (the second convolution has stride 2)."""
        return 2

    @property
    def num_segment_frames(self) -> int:
        """Mel frames in one window the encoder accepts (3000 = 30 s for the released models)."""
        return self.input_stride * self.max_source_positions
