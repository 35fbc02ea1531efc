"""GGUF <-> transformers maps for the llama, mistral and qwen2 GGUF architectures (imports no torch at module level).

The core's GGUF integration asks the plugin, through ``CONVERTER``, how
metadata becomes a config, how tensor names map, and which tensors need
llama.cpp's Q/K row permutation undone.
"""

from __future__ import annotations

import re
from typing import Any

# GGUF metadata key (after "<arch>.") -> config field
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.sliding_window": "sliding_window",
    "vocab_size": "vocab_size",
}
_TOKEN_IDS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$")
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
# rope_parameters names llama.cpp spells its own way under "<arch>.rope.scaling."; others keep their names.
_ROPE_KEYS_TO_GGUF = {"original_max_position_embeddings": "original_context_length"}
_ROPE_KEYS_FROM_GGUF = {gguf: name for name, gguf in _ROPE_KEYS_TO_GGUF.items()}
# Qwen2's first layer with a sliding window (no llama.cpp key; written and read by bestiary).
_MAX_WINDOW_LAYERS = "attention.sliding_window_start_layer"


class TextGGUFConverter:
    """Metadata and tensor-name conversions for decoder LLMs in GGUF."""

    def config_from_metadata(self, metadata: dict[str, Any], tensor_names: list[str]) -> dict[str, Any]:
        """Build a config.json-style dict from GGUF metadata."""
        arch = metadata["general.architecture"]
        config: dict[str, Any] = {"model_type": _MODEL_TYPES[arch]}
        for key, field in _CONFIG_KEYS.items():
            if f"{arch}.{key}" in metadata:
                config[field] = metadata[f"{arch}.{key}"]
        for key, field in _TOKEN_IDS.items():
            if key in metadata:
                config[field] = metadata[key]
        if "vocab_size" not in config and "tokenizer.ggml.tokens" in metadata:
            config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
        config["tie_word_embeddings"] = "output.weight" not in tensor_names
        window = config.get("sliding_window")
        if arch == "llama" and window:
            config["model_type"] = "mistral"  # llama.cpp has no mistral architecture; the window tells them apart
        if arch == "qwen2":
            config["use_sliding_window"] = bool(window)
            if f"qwen2.{_MAX_WINDOW_LAYERS}" in metadata:
                config["max_window_layers"] = metadata[f"qwen2.{_MAX_WINDOW_LAYERS}"]
        scaling = self._rope_scaling(arch, metadata)
        if scaling:
            config["rope_scaling"] = scaling
        config["architectures"] = [f"{_class_prefix(config['model_type'])}ForCausalLM"]
        return config

    @staticmethod
    def _rope_scaling(arch: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
        """rope_scaling from ``<arch>.rope.scaling.*``: llama.cpp's type, factor and original context length,
        and any other parameter of the rope type under its transformers name (as bestiary writes them)."""
        prefix = f"{arch}.rope.scaling."
        kind = metadata.get(prefix + "type")
        if kind in (None, "none"):
            return None
        scaling: dict[str, Any] = {"rope_type": kind}
        for key, value in metadata.items():
            if key.startswith(prefix) and key != prefix + "type":
                name = key[len(prefix) :]
                scaling[_ROPE_KEYS_FROM_GGUF.get(name, name)] = value
        return scaling

    def metadata_from_config(self, arch: str, config: Any) -> dict[str, Any]:
        """GGUF metadata (architecture keys) for a config, the inverse of ``config_from_metadata``."""
        metadata: dict[str, Any] = {}
        for key, field in _CONFIG_KEYS.items():
            value = getattr(config, field, None)
            if field == "rope_theta":
                value = (config.rope_parameters or {}).get("rope_theta")
            if value is not None:
                metadata[f"{arch}.{key}"] = float(value) if field in {"rope_theta", "rms_norm_eps"} else value
        if not _sliding_window_in_use(config):
            metadata.pop(f"{arch}.attention.sliding_window", None)
        elif config.model_type == "qwen2":
            metadata[f"{arch}.{_MAX_WINDOW_LAYERS}"] = config.max_window_layers
        metadata.update(_rope_scaling_metadata(arch, config.rope_parameters or {}))
        return metadata

    def gguf_architecture(self, model_type: str) -> str:
        """The GGUF architecture name for a model type."""
        return {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}[model_type]

    def tensor_name(self, gguf_name: str) -> str | None:
        """The transformers name of a GGUF tensor (None when the model has no such tensor)."""
        if gguf_name in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[gguf_name]
        match = _BLOCK.match(gguf_name)
        if match and match.group(2) in _BLOCK_NAMES:
            layer, part, kind = match.groups()
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
        return None

    def gguf_tensor_name(self, hf_name: str) -> str | None:
        """The GGUF name of a transformers tensor (inverse of ``tensor_name``)."""
        for gguf_name, name in _GLOBAL_NAMES.items():
            if name == hf_name:
                return gguf_name
        match = _HF_BLOCK.match(hf_name)
        if match:
            layer, part, kind = match.groups()
            for gguf_part, name in _BLOCK_NAMES.items():
                if name == part:
                    return f"blk.{layer}.{gguf_part}.{kind}"
        return None

    def row_permutation(self, arch: str, hf_name: str, config: Any) -> int | None:
        """Heads of llama.cpp's Q/K row interleaving to undo for this tensor, or None.

        llama.cpp reorders the rows of q_proj and k_proj of "llama"-arch files
        (rotary halves interleaved per head); qwen2 files are stored as is.
        """
        if arch != "llama":
            return None
        if hf_name.endswith("self_attn.q_proj.weight") or hf_name.endswith("self_attn.q_proj.bias"):
            return config.num_attention_heads
        if hf_name.endswith("self_attn.k_proj.weight") or hf_name.endswith("self_attn.k_proj.bias"):
            return config.num_key_value_heads
        return None


def _sliding_window_in_use(config: Any) -> bool:
    if config.model_type == "qwen2":
        return bool(config.use_sliding_window and config.sliding_window)
    return config.model_type == "mistral" and bool(config.sliding_window)


def _rope_scaling_metadata(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """``<arch>.rope.scaling.*`` keys for a rope type other than the default (every parameter but the theta)."""
    kind = params.get("rope_type", "default")
    if kind in ("default", None):
        return {}
    prefix = f"{arch}.rope.scaling."
    metadata: dict[str, Any] = {prefix + "type": kind}
    for name, value in params.items():
        if name in ("rope_type", "rope_theta") or value is None:
            continue
        if isinstance(value, float) or name == "factor":
            value = float(value)
        elif isinstance(value, list):
            value = [float(item) for item in value]
        metadata[prefix + _ROPE_KEYS_TO_GGUF.get(name, name)] = value
    return metadata


def _class_prefix(model_type: str) -> str:
    return {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type]


CONVERTER = TextGGUFConverter()
