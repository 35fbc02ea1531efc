"""The toy models: a mean of token embeddings, and a classifier on top of it."""

from __future__ import annotations

import torch
from torch import nn

from bestiary.modeling import PreTrainedModel
from bestiary.outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from bestiary_toy.configuration_toy import ToyConfig


class ToyPreTrainedModel(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"


class ToyModel(ToyPreTrainedModel):
    """Embeds tokens and mean-pools them (respecting the attention mask)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
        hidden = self.embeddings(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        weights = mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class ToyForSequenceClassification(ToyPreTrainedModel):
    """A linear classifier over the pooled embedding."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.toy = ToyModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
        pooled = self.toy(input_ids, attention_mask).pooler_output
        return SequenceClassifierOutput(logits=self.classifier(pooled))
