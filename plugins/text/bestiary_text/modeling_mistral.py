"""Mistral: the Llama decoder with a sliding attention window (see modeling_llama)."""

from __future__ import annotations

from bestiary_text import modeling_llama as llama
from bestiary_text.configuration_mistral import MistralConfig


class MistralPreTrainedModel(llama.LlamaPreTrainedModel):
    config_class = MistralConfig


class MistralModel(MistralPreTrainedModel, llama.LlamaModel):
    """Mistral decoder stack."""


class MistralForCausalLM(MistralPreTrainedModel, llama.LlamaForCausalLM):
    """Mistral with a language-modelling head."""

    base_model_class = MistralModel


class MistralForSequenceClassification(MistralPreTrainedModel, llama.LlamaForSequenceClassification):
    """Mistral with a classification head on the last non-padding token."""

    base_model_class = MistralModel


class MistralForTokenClassification(MistralPreTrainedModel, llama.LlamaForTokenClassification):
    """Mistral with a per-token classification head."""

    base_model_class = MistralModel


class MistralForQuestionAnswering(MistralPreTrainedModel, llama.LlamaForQuestionAnswering):
    """Mistral with a span-extraction head."""

    base_model_prefix = "model"
    base_model_class = MistralModel
