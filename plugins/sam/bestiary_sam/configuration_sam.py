"""Configuration of SAM: a vision encoder, a prompt encoder and a mask decoder (imports no torch).

``SamConfig`` holds the three parts as typed sub-configs and reads and writes
transformers' ``config.json`` unchanged. Field names and defaults are
transformers' (those of ``facebook/sam-vit-huge``'s classes).
"""

from __future__ import annotations

from typing import Any, ClassVar

from bestiary.config import Config
from bestiary.errors import ConfigError
from pydantic import Field, field_validator, model_validator

# Fields of the base Config that describe a whole model, not a SAM part; a
# sub-config writes them only when they were changed from their defaults.
_BASE_FIELDS = tuple(Config.model_fields)


class _SamPartConfig(Config):
    """Base of the three SAM sub-configs: written without the base config's model-level keys."""

    def to_dict(self) -> dict[str, Any]:
        """Return the sub-config as transformers writes it inside ``SamConfig``."""
        data = super().to_dict()
        for name in _BASE_FIELDS:
            if name in data and getattr(self, name) == Config.model_fields[name].default:
                data.pop(name)
        data.pop("label2id", None)
        data.pop("transformers_version", None)
        return data

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be positive, got {value}.")


class SamVisionConfig(_SamPartConfig):
    """The ViT image encoder with windowed and global attention, relative positions and a convolutional neck."""

    model_type: ClassVar[str] = "sam_vision_model"

    hidden_size: int = 768
    output_channels: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: list[int] = Field(default_factory=lambda: [2, 5, 8, 11])
    num_pos_feats: int = 128
    mlp_dim: int | None = None
    # Derived (hidden_size // 2); transformers writes it, so it is kept in sync and written too.
    scale: int | None = None

    @field_validator("image_size", "patch_size", mode="before")
    @classmethod
    def _square(cls, value: Any, info) -> Any:
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[0] != value[1]:
                raise ValueError(f"{info.field_name} must be one int (SAM's images and patches are square)")
            return value[0]
        return value

    @model_validator(mode="after")
    def _fill_derived(self) -> SamVisionConfig:
        self._check_positive("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
        if self.mlp_dim is None:
            self.__dict__["mlp_dim"] = int(self.hidden_size * self.mlp_ratio)
        self.__dict__["scale"] = self.hidden_size // 2
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"SamVisionConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"SamVisionConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})."
            )
        bad = [index for index in self.global_attn_indexes if not 0 <= index < self.num_hidden_layers]
        if bad:
            raise ConfigError(
                f"SamVisionConfig.global_attn_indexes {bad} are not layers of a {self.num_hidden_layers}-layer encoder; "
                f"use indexes in [0, {self.num_hidden_layers - 1}]."
            )
        return self

    @property
    def grid_size(self) -> int:
        """Patches per side of the image embedding (``image_size // patch_size``)."""
        return self.image_size // self.patch_size


class SamPromptEncoderConfig(_SamPartConfig):
    """The prompt encoder: points, boxes and low-resolution masks to sparse and dense embeddings."""

    model_type: ClassVar[str] = "sam_prompt_encoder"

    hidden_size: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    # Derived (image_size // patch_size); written like transformers does.
    image_embedding_size: int | None = None

    @model_validator(mode="after")
    def _fill_derived(self) -> SamPromptEncoderConfig:
        self._check_positive("hidden_size", "image_size", "patch_size", "mask_input_channels")
        self.__dict__["image_embedding_size"] = self.image_size // self.patch_size
        if self.num_point_embeddings < 4:
            raise ConfigError(
                "SamPromptEncoderConfig.num_point_embeddings must be at least 4 (negative point, positive point, "
                f"two box corners), got {self.num_point_embeddings}."
            )
        return self


class SamMaskDecoderConfig(_SamPartConfig):
    """The two-way transformer mask decoder with its IoU prediction head."""

    model_type: ClassVar[str] = "sam_mask_decoder"

    hidden_size: int = 256
    hidden_act: str = "relu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    layer_norm_eps: float = 1e-6

    @model_validator(mode="after")
    def _check(self) -> SamMaskDecoderConfig:
        self._check_positive("hidden_size", "mlp_dim", "num_attention_heads", "attention_downsample_rate")
        inner = self.hidden_size // self.attention_downsample_rate
        if inner % self.num_attention_heads or self.hidden_size % 8:
            raise ConfigError(
                f"SamMaskDecoderConfig: hidden_size ({self.hidden_size}) must be a multiple of 8, and "
                f"hidden_size // attention_downsample_rate ({inner}) a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.iou_head_depth < 2:
            raise ConfigError(f"SamMaskDecoderConfig.iou_head_depth must be at least 2, got {self.iou_head_depth}.")
        return self


class SamConfig(Config):
    """Segment Anything: ``vision_config``, ``prompt_encoder_config`` and ``mask_decoder_config``.

    Each sub-config may be given as a config object or a dict (as read from
    ``config.json``); a missing one takes its defaults.
    """

    model_type: ClassVar[str] = "sam"

    vision_config: SamVisionConfig = Field(default_factory=SamVisionConfig)
    prompt_encoder_config: SamPromptEncoderConfig = Field(default_factory=SamPromptEncoderConfig)
    mask_decoder_config: SamMaskDecoderConfig = Field(default_factory=SamMaskDecoderConfig)
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    @field_validator("vision_config", "prompt_encoder_config", "mask_decoder_config", mode="before")
    @classmethod
    def _sub_config(cls, value: Any, info) -> Any:
        target = cls.model_fields[info.field_name].annotation
        if value is None:
            return target()
        if isinstance(value, (dict, target)):
            return value
        if hasattr(value, "to_dict"):  # another config object, e.g. transformers' own sub-config
            return target.from_dict(value.to_dict())
        raise ValueError(f"{info.field_name} must be a {target.__name__} or a dict, got {type(value).__name__}")

    @model_validator(mode="after")
    def _check_consistency(self) -> SamConfig:
        vision, prompt, decoder = self.vision_config, self.prompt_encoder_config, self.mask_decoder_config
        if 2 * vision.num_pos_feats != prompt.hidden_size:
            raise ConfigError(
                f"SamConfig: the positional encoding has 2 * vision_config.num_pos_feats = {2 * vision.num_pos_feats} "
                f"channels but prompt_encoder_config.hidden_size is {prompt.hidden_size}; make them equal."
            )
        if vision.output_channels != prompt.hidden_size or prompt.hidden_size != decoder.hidden_size:
            raise ConfigError(
                "SamConfig: vision_config.output_channels, prompt_encoder_config.hidden_size and "
                f"mask_decoder_config.hidden_size must be equal; got {vision.output_channels}, "
                f"{prompt.hidden_size} and {decoder.hidden_size}."
            )
        if prompt.image_embedding_size != vision.grid_size:
            raise ConfigError(
                f"SamConfig: prompt_encoder_config.image_size // patch_size ({prompt.image_embedding_size}) must "
                f"equal vision_config.image_size // patch_size ({vision.grid_size})."
            )
        return self
