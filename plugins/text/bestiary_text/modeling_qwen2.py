"""Qwen2: the Llama decoder with q/k/v biases and per-layer sliding windows (see modeling_llama)."""

from __future__ import annotations

from bestiary_text import modeling_llama as llama
from bestiary_text.configuration_qwen2 import Qwen2Config


class Qwen2Attention(llama.LlamaAttention):
    qkv_bias = True
    o_bias = False


class Qwen2DecoderLayer(llama.LlamaDecoderLayer):
    attention_class = Qwen2Attention


class Qwen2PreTrainedModel(llama.LlamaPreTrainedModel):
    config_class = Qwen2Config


class Qwen2Model(Qwen2PreTrainedModel, llama.LlamaModel):
    """Qwen2 decoder stack."""

    layer_class = Qwen2DecoderLayer


class Qwen2ForCausalLM(Qwen2PreTrainedModel, llama.LlamaForCausalLM):
    """Qwen2 with a language-modelling head."""

    base_model_class = Qwen2Model


class Qwen2ForSequenceClassification(Qwen2PreTrainedModel, llama.LlamaForSequenceClassification):
    """Qwen2 with a classification head on the last non-padding token."""

    base_model_class = Qwen2Model


class Qwen2ForTokenClassification(Qwen2PreTrainedModel, llama.LlamaForTokenClassification):
    """Qwen2 with a per-token classification head."""

    base_model_class = Qwen2Model


class Qwen2ForQuestionAnswering(Qwen2PreTrainedModel, llama.LlamaForQuestionAnswering):
    """Qwen2 with a span-extraction head."""

    base_model_class = Qwen2Model
