"""Configuration of Swin Transformer (imports no torch)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from bestiary.backbone import BackboneConfigMixin
from bestiary.errors import ConfigError

# Values transformers writes into config.json that follow from other fields.
_DERIVED_KEYS = ("num_layers", "hidden_size", "stage_names")


class SwinConfig(BackboneConfigMixin):
    """Swin Transformer configuration, with transformers' field names and defaults.

    ``stage_names`` (``["stem", "stage1", ...]``), ``num_layers`` and
    ``hidden_size`` (channels after the last stage) follow from ``depths`` and
    ``embed_dim``; they are written to ``config.json`` as transformers does and
    recomputed when read. ``out_features`` / ``out_indices`` choose the stages
    :class:`~bestiary_swin.modeling_swin.SwinBackbone` returns.
    """

    model_type: ClassVar[str] = "swin"

    image_size: int | list[int] = 224
    patch_size: int | list[int] = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] = [2, 2, 6, 2]
    num_heads: list[int] = [3, 6, 12, 24]
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    encoder_stride: int = 32

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key not in _DERIVED_KEYS}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> "SwinConfig":
        if len(self.depths) != len(self.num_heads):
            raise ConfigError(
                f"depths {self.depths} and num_heads {self.num_heads} must have one entry per stage; "
                "give both the same length."
            )
        for stage, heads in enumerate(self.num_heads):
            channels = self.embed_dim * 2**stage
            if heads <= 0 or channels % heads:
                raise ConfigError(
                    f"stage {stage + 1} has {channels} channels (embed_dim * 2**{stage}), which num_heads[{stage}]="
                    f"{heads} does not divide; choose head counts that divide each stage's width."
                )
        if self.window_size <= 0:
            raise ConfigError(f"window_size must be positive, got {self.window_size}.")
        return self

    # -- derived values -----------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of stages."""
        return len(self.depths)

    @property
    def num_hidden_layers(self) -> int:
        """Alias of ``num_layers`` (transformers' attribute map)."""
        return self.num_layers

    @property
    def num_attention_heads(self) -> list[int]:
        """Alias of ``num_heads`` (transformers' attribute map)."""
        return self.num_heads

    @property
    def hidden_size(self) -> int:
        """Channels after the last stage."""
        return int(self.embed_dim * 2 ** (len(self.depths) - 1))

    @property
    def stage_names(self) -> list[str]:
        """``["stem", "stage1", ..., "stageN"]``."""
        return ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]

    @property
    def patch_size_2d(self) -> tuple[int, int]:
        """``patch_size`` as (height, width)."""
        return _pair(self.patch_size)

    @property
    def image_size_2d(self) -> tuple[int, int]:
        """``image_size`` as (height, width)."""
        return _pair(self.image_size)

    def stage_channels(self) -> list[int]:
        """Channels of every stage (the stem, then each stage before its downsampling)."""
        return [self.embed_dim] + [int(self.embed_dim * 2**index) for index in range(len(self.depths))]

    def stage_strides(self) -> list[int]:
        """Stride of every stage's feature map relative to the input (the patch size, then doubling)."""
        patch = self.patch_size_2d[0]
        return [patch] + [patch * 2**index for index in range(len(self.depths))]

    def known_stage_names(self) -> list[str]:
        """Swin's stages follow from ``depths``."""
        return self.stage_names

    def to_dict(self) -> dict[str, Any]:
        """The config as transformers writes it, derived keys included."""
        data = super().to_dict()
        data.update(num_layers=self.num_layers, hidden_size=self.hidden_size, stage_names=self.stage_names)
        return dict(sorted(data.items()))


def _pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"expected an int or a (height, width) pair, got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)
