"""Configuration of Wav2Vec2 models (imports no torch)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError


class Wav2Vec2Config(Config):
    """Wav2Vec2 configuration, with transformers' field names and defaults (``facebook/wav2vec2-base-960h``).

    ``feat_extract_norm`` chooses the feature encoder: ``"group"`` (group
    norm on the first convolution, the base models) or ``"layer"`` (layer
    norm on every convolution, the large "lv60" models, usually with
    ``do_stable_layer_norm=True``: pre-norm transformer layers).
    """

    model_type: ClassVar[str] = "wav2vec2"

    vocab_size: int | None = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    feat_quantizer_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_norm: Literal["group", "layer"] = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: list[int] = [512, 512, 512, 512, 512, 512, 512]
    conv_stride: list[int] = [5, 2, 2, 2, 2, 2, 2]
    conv_kernel: list[int] = [10, 3, 3, 3, 3, 2, 2]
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    num_codevectors_per_group: int = 320
    num_codevector_groups: int = 2
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    diversity_loss_weight: float = 0.1
    ctc_loss_reduction: Literal["sum", "mean", "none"] = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    tdnn_dim: list[int] = [512, 512, 512, 512, 1500]
    tdnn_kernel: list[int] = [5, 3, 3, 1, 1]
    tdnn_dilation: list[int] = [1, 2, 3, 1, 1]
    xvector_output_dim: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | list[int] | None = 1
    eos_token_id: int | list[int] | None = 2
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None
    adapter_attn_dim: int | None = None
    tie_word_embeddings: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: object) -> object:
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key != "num_feat_extract_layers"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "Wav2Vec2Config":
        layers = len(self.conv_dim)
        if not (len(self.conv_stride) == len(self.conv_kernel) == layers) or layers == 0:
            raise ConfigError(
                "Wav2Vec2Config: conv_dim, conv_stride and conv_kernel must have the same (non-zero) length; got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)} and {len(self.conv_kernel)}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"Wav2Vec2Config.hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(
                f"Wav2Vec2Config.hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})."
            )
        if self.output_hidden_size is None:
            self.__dict__["output_hidden_size"] = self.hidden_size
        return self

    @property
    def num_feat_extract_layers(self) -> int:
        """Number of convolutions in the feature encoder."""
        return len(self.conv_dim)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Audio samples per output frame (the product of the convolution strides; 320 = 20 ms at 16 kHz)."""
        return math.prod(self.conv_stride)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["num_feat_extract_layers"] = self.num_feat_extract_layers
        return dict(sorted(data.items()))
