"""Configuration of Qwen2-VL: a vision transformer and a Qwen2 decoder with multimodal rotary positions.

``Qwen2VLConfig`` holds ``vision_config`` and ``text_config`` as typed
sub-configs and reads and writes transformers' ``config.json`` layout (the
nested one transformers 5 writes, and the older flat one where the decoder's
settings sit at the top level, as in the published Qwen2-VL checkpoints).
Field names and defaults are transformers' (those of Qwen2-VL-7B). Imports no torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationError, field_validator, model_validator

from bestiary.config import Config
from bestiary.errors import ConfigError
from bestiary_text.configuration_qwen2 import Qwen2Config

# Keys transformers writes for each part; anything else the file held is kept as an extra.
_VISION_KEYS = (
    "dtype", "depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels", "patch_size",
    "spatial_merge_size", "temporal_patch_size", "initializer_range", "rope_parameters",
)
_TEXT_KEYS = (
    "dtype", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "attention_dropout",
    "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id",
)
_TOP_KEYS = (
    "architectures", "dtype", "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
    "tie_word_embeddings", "text_config", "vision_config",
)
# Decoder settings that old (flat) checkpoints keep at the top level.
_FLAT_TEXT_KEYS = (*_TEXT_KEYS, "rope_scaling", "rope_theta", "head_dim", "tie_word_embeddings")
_TEXT_ROPE_THETA = 1000000.0
_VISION_ROPE_THETA = 10000.0


def _written(config: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """``config.to_dict()`` restricted to ``keys`` plus the extras read from the file, keys sorted."""
    full = Config.to_dict(config)
    data = {key: full[key] for key in keys if key in full}
    for key, value in (config.__pydantic_extra__ or {}).items():
        data[key] = full.get(key, value)
    for key in ("architectures", "dtype"):
        if data.get(key) is None:
            data.pop(key, None)
    if config.model_type:
        data["model_type"] = config.model_type
    return dict(sorted(data.items()))


class Qwen2VLVisionConfig(Config):
    """The vision transformer: 3D patch embedding, ``depth`` blocks with 2D rotary positions, a patch merger.

    ``hidden_size`` is the width of the language model the merger projects
    into; ``embed_dim`` is the width of the vision blocks.
    """

    model_type: ClassVar[str] = "qwen2_vl_vision"

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 3584
    hidden_act: str = "quick_gelu"
    mlp_ratio: int | float = 4
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    initializer_range: float = 0.02
    rope_parameters: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "in_chans" in data and "in_channels" not in data:
                data["in_channels"] = data["in_chans"]
            for alias, name in (("num_attention_heads", "num_heads"), ("num_hidden_layers", "depth")):
                if alias in data and name not in data:
                    data[name] = data.pop(alias)
        return data

    @field_validator("patch_size", "temporal_patch_size", mode="before")
    @classmethod
    def _one_int(cls, value: Any, info) -> Any:
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"{info.field_name} must be one int (Qwen2-VL's patches are square), got {value}")
            return value[0]
        return value

    @model_validator(mode="after")
    def _check(self) -> "Qwen2VLVisionConfig":
        params = dict(self.rope_parameters or {})
        params.setdefault("rope_theta", _VISION_ROPE_THETA)
        params.setdefault("rope_type", "axial")
        if params["rope_type"] != "axial":
            raise ConfigError(
                "vision_config.rope_parameters.rope_type must be 'axial' (2D rotary positions), "
                f"got {params['rope_type']!r}."
            )
        self.__dict__["rope_parameters"] = params
        for name in ("depth", "embed_dim", "hidden_size", "num_heads", "patch_size", "spatial_merge_size",
                     "temporal_patch_size", "in_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vision_config.{name} must be positive, got {getattr(self, name)}.")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"vision_config.embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})."
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"vision_config: the head size embed_dim / num_heads = {self.head_dim} must be a multiple of 4 "
                "(half of it rotates with the row, half with the column of each patch)."
            )
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head of the vision blocks."""
        return self.embed_dim // self.num_heads

    @property
    def num_attention_heads(self) -> int:
        """transformers' alias of ``num_heads``."""
        return self.num_heads

    @property
    def num_hidden_layers(self) -> int:
        """transformers' alias of ``depth``."""
        return self.depth

    def to_dict(self) -> dict[str, Any]:
        """Return the sub-config as transformers writes it inside ``Qwen2VLConfig``."""
        return _written(self, _VISION_KEYS)


class Qwen2VLTextConfig(Qwen2Config):
    """The Qwen2 decoder of Qwen2-VL; ``rope_parameters["mrope_section"]`` splits its rotary dims.

    The rotary frequencies of each head are split into three sections that
    rotate with the temporal, height and width position of a token
    (``mrope_section``, summing to half the head size; [16, 24, 24] when unset).
    """

    model_type: ClassVar[str] = "qwen2_vl_text"

    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int | None = 8
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 80
    attention_dropout: float = 0.0
    bos_token_id: int | list[int] | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _mrope_rope_type(cls, data: Any) -> Any:
        # Published checkpoints say rope_scaling={"type": "mrope", "mrope_section": [...]}: plain rotary
        # frequencies, recomposed per section. The decoder's theta defaults to 1e6.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("rope_scaling", "rope_parameters"):
            params = data.get(key)
            if isinstance(params, dict) and params.get("rope_type", params.get("type")) == "mrope":
                params = {k: v for k, v in params.items() if k != "type"}
                params["rope_type"] = "default"
                data[key] = params
        has_theta = "rope_theta" in data or any(
            isinstance(data.get(key), dict) and "rope_theta" in data[key] for key in ("rope_scaling", "rope_parameters")
        )
        if not has_theta:
            data["rope_theta"] = _TEXT_ROPE_THETA
        data["head_dim"] = None  # Qwen2-VL always uses hidden_size // num_attention_heads
        return data

    @model_validator(mode="after")
    def _check_sections(self) -> "Qwen2VLTextConfig":
        half = self.head_dim // 2
        sections = self.mrope_section
        if len(sections) != 3 or any(int(s) < 0 for s in sections) or sum(sections) != half:
            raise ConfigError(
                f"text_config.rope_parameters.mrope_section {list(sections)} must be three non-negative sizes "
                f"(temporal, height, width) summing to half the head size, {half} "
                f"(hidden_size {self.hidden_size} / num_attention_heads {self.num_attention_heads} / 2)."
            )
        return self

    @property
    def mrope_section(self) -> list[int]:
        """Rotary dims (of half a head) driven by the temporal, height and width positions."""
        return [int(s) for s in (self.rope_parameters or {}).get("mrope_section", [16, 24, 24])]

    def to_dict(self) -> dict[str, Any]:
        """Return the sub-config as transformers writes it inside ``Qwen2VLConfig``."""
        return _written(self, _TEXT_KEYS)


class Qwen2VLConfig(Config):
    """Qwen2-VL: ``vision_config``, ``text_config`` and the ids of the vision placeholder tokens.

    Sub-configs may be given as config objects or dicts; a missing
    ``text_config`` is gathered from top-level keys (the flat layout of the
    published checkpoints).
    """

    model_type: ClassVar[str] = "qwen2_vl"

    text_config: Qwen2VLTextConfig = Field(default_factory=Qwen2VLTextConfig)
    vision_config: Qwen2VLVisionConfig = Field(default_factory=Qwen2VLVisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg'].removeprefix('Value error, ')}"
                for error in exc.errors()
            )
            raise ConfigError(f"Invalid Qwen2VLConfig: {problems}") from None

    @model_validator(mode="before")
    @classmethod
    def _gather_text_config(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        text = data.get("text_config")
        if text is None:
            text = {key: data.pop(key) for key in _FLAT_TEXT_KEYS if key in data}
            data["text_config"] = text
        elif isinstance(text, Config):
            text = text.to_dict()
        elif hasattr(text, "to_dict") and not isinstance(text, dict):  # e.g. transformers' own sub-config
            text = text.to_dict()
            data["text_config"] = text
        if isinstance(text, dict) and not data.get("tie_word_embeddings") and text.get("tie_word_embeddings"):
            data["tie_word_embeddings"] = True  # older saves kept the flag inside text_config
        vision = data.get("vision_config")
        if vision is not None and not isinstance(vision, (dict, Config)) and hasattr(vision, "to_dict"):
            data["vision_config"] = vision.to_dict()
        return data

    @field_validator("text_config", "vision_config", mode="before")
    @classmethod
    def _sub_config(cls, value: Any, info) -> Any:
        target = cls.model_fields[info.field_name].annotation
        if value is None:
            return target()
        if isinstance(value, target):
            return value
        if isinstance(value, Config):
            return target.from_dict(value.to_dict())
        if isinstance(value, dict):
            return target.from_dict(value)
        raise ValueError(f"{info.field_name} must be a {target.__name__} or a dict, got {type(value).__name__}")

    @model_validator(mode="after")
    def _check_consistency(self) -> "Qwen2VLConfig":
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "video_token_id"):
            value = getattr(self, name)
            if not 0 <= value < vocab:
                raise ConfigError(
                    f"Qwen2VLConfig.{name} ({value}) is not a token of the {vocab}-token vocabulary; "
                    "set it to the id of the placeholder token in your tokenizer."
                )
        return self

    def check_model_widths(self) -> None:
        """Raise :class:`ConfigError` unless the vision merger projects into the decoder's width.

        Not checked at construction: transformers' default config pairs a
        3584-wide merger with an 8192-wide decoder, and must stay loadable.
        """
        if self.vision_config.hidden_size != self.text_config.hidden_size:
            raise ConfigError(
                f"Qwen2VLConfig: vision_config.hidden_size ({self.vision_config.hidden_size}) is the width the patch "
                f"merger projects into and must equal text_config.hidden_size ({self.text_config.hidden_size})."
            )

    def get_text_config(self) -> Qwen2VLTextConfig:
        """The decoder's config."""
        return self.text_config

    def to_dict(self) -> dict[str, Any]:
        """Return the config as transformers 5 writes it (nested text and vision configs)."""
        data = _written(self, _TOP_KEYS)
        data.setdefault("transformers_version", self.transformers_version)
        return dict(sorted(data.items()))
