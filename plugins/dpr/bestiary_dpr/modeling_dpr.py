"""DPR: dense passage retrieval with BERT encoders and an extractive reader.

A question encoder and a context encoder each embed a text as the final
state of its first token (optionally projected by ``encode_proj``); passages
are retrieved by the inner product of the two embeddings. The reader reads
``[CLS] question [SEP] title [SEP] passage`` sequences and gives span
start/end logits per token and one relevance logit per passage.

All three share ``model_type="dpr"``; ``AutoModel`` picks the class named in
the checkpoint's ``architectures``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bestiary.errors import ConfigError
from bestiary.modeling import PreTrainedModel
from bestiary.outputs import BaseModelOutputWithPooling, ModelOutput, Tensor
from bestiary_bert.modeling_bert import BertModel
from bestiary_dpr.configuration_dpr import DPRConfig


@dataclass
class DPRQuestionEncoderOutput(ModelOutput):
    """Output of :class:`DPRQuestionEncoder`: ``pooler_output`` is the question embedding."""

    pooler_output: Tensor = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class DPRContextEncoderOutput(ModelOutput):
    """Output of :class:`DPRContextEncoder`: ``pooler_output`` is the passage embedding."""

    pooler_output: Tensor = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class DPRReaderOutput(ModelOutput):
    """Output of :class:`DPRReader`: span logits [passages, length] and relevance logits [passages]."""

    start_logits: Tensor = None
    end_logits: Tensor = None
    relevance_logits: Tensor = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


class DPREncoder(nn.Module):
    """A BERT encoder without pooler whose embedding is the first token's state, optionally projected."""

    def __init__(self, config: DPRConfig) -> None:
        super().__init__()
        self.bert_model = BertModel(config, add_pooling_layer=False)
        self.projection_dim = config.projection_dim
        if self.projection_dim > 0:
            self.encode_proj = nn.Linear(config.hidden_size, config.projection_dim)

    @property
    def embeddings_size(self) -> int:
        """Size of the embedding this encoder returns."""
        return self.projection_dim if self.projection_dim > 0 else self.bert_model.config.hidden_size

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        outputs = self.bert_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        sequence_output = outputs.last_hidden_state
        pooled = sequence_output[:, 0, :]
        if self.projection_dim > 0:
            pooled = self.encode_proj(pooled)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class DPRSpanPredictor(nn.Module):
    """The reader's encoder with its two heads: span logits per token, relevance logit per passage."""

    def __init__(self, config: DPRConfig) -> None:
        super().__init__()
        self.encoder = DPREncoder(config)
        self.qa_outputs = nn.Linear(self.encoder.embeddings_size, 2)
        self.qa_classifier = nn.Linear(self.encoder.embeddings_size, 1)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DPRReaderOutput:
        outputs = self.encoder(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        sequence_output = outputs.last_hidden_state
        start_logits, end_logits = self.qa_outputs(sequence_output).unbind(dim=-1)
        relevance_logits = self.qa_classifier(sequence_output[:, 0, :]).squeeze(-1)
        return DPRReaderOutput(
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            relevance_logits=relevance_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class DPRPreTrainedModel(PreTrainedModel):
    """Shared loading and initialisation of DPR models."""

    config_class = DPRConfig
    _checkpoint_key_renames = [(r"LayerNorm\.gamma$", "LayerNorm.weight"), (r"LayerNorm\.beta$", "LayerNorm.bias")]
    _keys_to_ignore_on_load_unexpected = [r"embeddings\.position_ids$", r"pooler\.dense\.(weight|bias)$"]

    def get_input_embeddings(self) -> nn.Module:
        return self._bert().embeddings.word_embeddings

    def _bert(self) -> BertModel:
        raise NotImplementedError

    def _options(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        config = self.config
        return (
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )

    def _default_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The encoders' default mask: every token that is not the padding id (all tokens for embeddings)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of input_ids and inputs_embeds.")
        if attention_mask is not None or input_ids is None or self.config.pad_token_id is None:
            return attention_mask
        return (input_ids != self.config.pad_token_id).long()


class _DPRTextEncoder(DPRPreTrainedModel):
    """A question or context encoder: ``pooler_output`` is the text's embedding."""

    output_class: type[ModelOutput] = ModelOutput

    def _encoder(self) -> DPREncoder:
        return getattr(self, self.base_model_prefix)

    def _bert(self) -> BertModel:
        return self._encoder().bert_model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ModelOutput | tuple:
        """Embed a batch of texts: ``pooler_output`` [batch, embeddings_size]."""
        output_attentions, output_hidden_states, return_dict = self._options(
            output_attentions, output_hidden_states, return_dict
        )
        attention_mask = self._default_mask(input_ids, inputs_embeds, attention_mask)
        outputs = self._encoder()(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        output = self.output_class(
            pooler_output=outputs.pooler_output, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class DPRQuestionEncoder(_DPRTextEncoder):
    """Embeds questions (``question_encoder.*`` weights)."""

    base_model_prefix = "question_encoder"
    output_class = DPRQuestionEncoderOutput

    def __init__(self, config: DPRConfig) -> None:
        super().__init__(config)
        self.question_encoder = DPREncoder(config)
        self.post_init()


class DPRContextEncoder(_DPRTextEncoder):
    """Embeds passages, usually given as (title, text) pairs (``ctx_encoder.*`` weights)."""

    base_model_prefix = "ctx_encoder"
    output_class = DPRContextEncoderOutput

    def __init__(self, config: DPRConfig) -> None:
        super().__init__(config)
        self.ctx_encoder = DPREncoder(config)
        self.post_init()


class DPRReader(DPRPreTrainedModel):
    """Reads (question, title, passage) sequences: span start/end logits and a relevance logit per passage."""

    base_model_prefix = "span_predictor"

    def __init__(self, config: DPRConfig) -> None:
        super().__init__(config)
        if config.projection_dim > 0:
            raise ConfigError(
                f"DPRReader needs projection_dim=0, got {config.projection_dim}: its span heads would take "
                f"{config.projection_dim} inputs but read {config.hidden_size}-wide token states (transformers "
                "fails the same way at run time). Set projection_dim=0 in the reader's config."
            )
        self.span_predictor = DPRSpanPredictor(config)
        self.post_init()

    def _bert(self) -> BertModel:
        return self.span_predictor.encoder.bert_model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DPRReaderOutput | tuple:
        """Score spans of [passages, length] inputs from :class:`DPRReaderTokenizer`.

        Without ``attention_mask`` every token is attended to, as in transformers.
        """
        output_attentions, output_hidden_states, return_dict = self._options(
            output_attentions, output_hidden_states, return_dict
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DPRReader needs exactly one of input_ids and inputs_embeds.")
        output = self.span_predictor(
            input_ids,
            attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DPRConfig",
    "DPRQuestionEncoder",
    "DPRContextEncoder",
    "DPRReader",
    "DPRQuestionEncoderOutput",
    "DPRContextEncoderOutput",
    "DPRReaderOutput",
    "DPRPreTrainedModel",
]
