"""GGUF <-> transformers maps for the llama, mistral and qwen2 GGUF architectures (imports no torch at module level).

The core's GGUF integration asks the plugin, through ``CONVERTER``, how
metadata becomes a config, how tensor names map, and which tensors need
llama.cpp's Q/K row permutation undone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bestiary_text.gguf_rope import ROPE_FREQS, rope_freqs_tensor, rope_scaling_from_metadata, rope_scaling_metadata

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
# Qwen2's first layer with a sliding window (no llama.cpp key; written and read by bestiary).
_MAX_WINDOW_LAYERS = "attention.sliding_window_start_layer"


class TextGGUFConverter:
    """Metadata and tensor-name conversions for decoder LLMs in GGUF."""

    def config_from_metadata(
        self, metadata: dict[str, Any], tensor_names: list[str], read_tensor: Callable[[str], Any] | None = None
    ) -> dict[str, Any]:
        """Build a config.json-style dict from GGUF metadata (and ``rope_freqs.weight``, read through ``read_tensor``)."""
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
        rope_freqs = None
        if ROPE_FREQS in tensor_names and read_tensor is not None:
            rope_freqs = [float(value) for value in read_tensor(ROPE_FREQS).reshape(-1).tolist()]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        theta = float(config.get("rope_theta", 10000.0))
        source = str(metadata.get("general.name", arch))
        scaling = rope_scaling_from_metadata(arch, metadata, rope_freqs, theta, head_dim, source)
        if scaling:
            config["rope_scaling"] = scaling
        config["architectures"] = [f"{_class_prefix(config['model_type'])}ForCausalLM"]
        return config

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
        metadata.update(rope_scaling_metadata(arch, config.rope_parameters or {}))
        return metadata

    def extra_tensors(self, arch: str, config: Any) -> dict[str, list[float]]:
        """Tensors llama.cpp derives from the config (Llama 3's ``rope_freqs.weight``), by GGUF name."""
        factors = rope_freqs_tensor(config.rope_parameters or {}, _head_dim(config))
        return {ROPE_FREQS: factors} if factors is not None else {}

    def config_tensors(self) -> frozenset[str]:
        """GGUF tensors read into the config, not into the model."""
        return frozenset({ROPE_FREQS})

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


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _class_prefix(model_type: str) -> str:
    return {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type]


CONVERTER = TextGGUFConverter()
