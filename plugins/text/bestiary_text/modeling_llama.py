"""Llama: decoder-only transformer with RMSNorm, rotary positions and grouped-query attention.

Mistral and Qwen2 reuse these modules with small differences (sliding
windows, q/k/v biases); see their modeling files.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.generation.cache import Cache, DynamicCache
from bestiary.generation.mixin import GenerationMixin
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.nn.attention import AttentionMask, attend, build_attention_mask, split_heads
from bestiary.nn.decoder_step import DecoderLayerParts, DecoderStackParts, native_decoder_step
from bestiary.nn.norms import RMSNorm
from bestiary.nn.projection import project
from bestiary.nn.rope import RotaryEmbedding, RotaryFactors, rotary_factors, rotate_heads
from bestiary.outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from bestiary_text.configuration_llama import LlamaConfig


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)``, through :func:`~bestiary.nn.projection.project` (one native matrix-vector call when decoding)."""
    return project(x, (layer,))[0]


class LlamaMLP(nn.Module):
    """Gated feed-forward block: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = get_activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, (self.gate_proj, self.up_proj))
        return linear(self.act_fn(gate) * up, self.down_proj)


class LlamaAttention(nn.Module):
    """Multi-head attention with grouped key/value heads and rotary positions."""

    qkv_bias: bool | None = None  # None: follow config.attention_bias
    o_bias: bool | None = None

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.attn_implementation = "sdpa"
        qkv_bias = config.attention_bias if self.qkv_bias is None else self.qkv_bias
        o_bias = config.attention_bias if self.o_bias is None else self.o_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: RotaryFactors,
        mask: AttentionMask,
        cache: Cache | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query, key, value = project(hidden_states, (self.q_proj, self.k_proj, self.v_proj))
        query = rotate_heads(query, self.head_dim, rotary)
        key = rotate_heads(key, self.head_dim, rotary)
        value = split_heads(value, self.head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        output, weights = attend(
            query,
            key,
            value,
            mask,
            scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
            eager=output_attentions or self.attn_implementation == "eager",
        )
        return linear(output.view(batch, length, -1), self.o_proj), weights


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    attention_class: type[LlamaAttention] = LlamaAttention

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: RotaryFactors,
        mask: AttentionMask,
        cache: Cache | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(self.input_layernorm(hidden_states), rotary, mask, cache, output_attentions)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


class LlamaPreTrainedModel(PreTrainedModel):
    """Shared loading and initialisation of Llama-family models."""

    config_class = LlamaConfig
    base_model_prefix = "model"
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class LlamaModel(LlamaPreTrainedModel):
    """The decoder stack without a head; returns the last hidden state and the cache."""

    layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.rope_parameters, config.head_dim, config.max_position_embeddings)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of one layer (None: full attention)."""
        # Looked up on the class: a missing attribute on a pydantic instance raises inside
        # pydantic's __getattr__, which torch.compile cannot trace.
        window_of = getattr(type(self.config), "layer_sliding_window", None)
        return window_of(self.config, layer_idx) if window_of else None

    def _native_decoder_parts(self) -> DecoderStackParts | None:
        """The stack as the native decoding step reads it; None when a layer is not the plain Llama computation."""
        layers = []
        for layer_idx, layer in enumerate(self.layers):
            attention, mlp = layer.self_attn, layer.mlp
            if (
                type(layer).forward is not LlamaDecoderLayer.forward
                or type(attention).forward is not LlamaAttention.forward
                or type(mlp).forward is not LlamaMLP.forward
                or type(mlp.act_fn) is not nn.SiLU
                or attention.layer_idx != layer_idx  # the kernel pairs cache layers with positions in the stack
            ):
                return None
            layers.append(
                DecoderLayerParts(
                    modules=(layer, attention, mlp, mlp.act_fn, layer.input_layernorm, layer.post_attention_layernorm),
                    input_norm=layer.input_layernorm,
                    post_norm=layer.post_attention_layernorm,
                    q=attention.q_proj,
                    k=attention.k_proj,
                    v=attention.v_proj,
                    o=attention.o_proj,
                    gate=mlp.gate_proj,
                    up=mlp.up_proj,
                    down=mlp.down_proj,
                    window=self.layer_sliding_window(layer_idx),
                )
            )
        attention = self.layers[0].self_attn if len(self.layers) else None
        if attention is None:
            return None
        return DecoderStackParts(
            layers=tuple(layers),
            final_norm=self.norm,
            num_heads=attention.num_heads,
            num_kv_heads=attention.num_kv_heads,
            head_dim=attention.head_dim,
            scaling=attention.scaling,
        )

    def _layer_masks(
        self,
        attention_mask: torch.Tensor | None,
        cache_position: torch.Tensor,
        cache: Cache | None,
        dtype: torch.dtype,
    ) -> list[AttentionMask]:
        """One mask per layer, built once per (window, number of keys) unless the cache's layers differ in layout."""
        per_layer = getattr(cache, "per_layer_positions", False)
        built: dict[tuple[int | None, int], AttentionMask] = {}
        masks = []
        for layer_idx in range(len(self.layers)):
            window = self.layer_sliding_window(layer_idx)
            # Every layer asks (the cache contract), but only the shape is compared: layers of a cache without
            # per_layer_positions hold the same key slots when they have as many, and reading a value would
            # cost a host sync per layer (and break a compiled graph).
            key_positions = cache.key_positions(layer_idx, cache_position) if cache is not None else cache_position
            signature = (window, key_positions.shape[0])
            if signature not in built or per_layer:
                built[signature] = build_attention_mask(
                    attention_mask, cache_position, key_positions, dtype, sliding_window=window
                )
            masks.append(built[signature])
        return masks

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        past = past_key_values if past_key_values is not None else cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past is None:
            past = DynamicCache()
        if cache_position is None:
            start = past.get_seq_length() if past is not None else 0
            cache_position = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        if past is not None and not output_attentions and not output_hidden_states:
            decoded = native_decoder_step(
                self, self._native_decoder_parts, inputs_embeds, cos, sin, past, cache_position, attention_mask
            )
            if decoded is not None:
                return BaseModelOutputWithPast(last_hidden_state=decoded, past_key_values=past if use_cache else None)
        masks = self._layer_masks(attention_mask, cache_position, past, inputs_embeds.dtype)
        hidden_states = inputs_embeds
        rotary = rotary_factors(cos, sin)
        all_hidden: list[torch.Tensor] = []
        all_attentions: list[torch.Tensor] = []
        for layer, mask in zip(self.layers, masks):
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(hidden_states, rotary, mask, past, output_attentions)
            if output_attentions:
                all_attentions.append(weights)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


def _base_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in {"labels", "logits_to_keep", "return_dict"}}


class LlamaForCausalLM(LlamaPreTrainedModel, GenerationMixin):
    """Llama with a language-modelling head."""

    base_model_class: type[LlamaModel] = LlamaModel
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            kept = hidden_states[:, -logits_to_keep:, :] if logits_to_keep > 0 else hidden_states
        else:
            kept = hidden_states[:, logits_to_keep, :]
        logits = linear(kept, self.lm_head)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross entropy: logits at t predict labels at t+1."""
    shifted_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=ignore_index)


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    """Llama with a classification head on the last non-padding token."""

    base_model_class: type[LlamaModel] = LlamaModel

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **_base_kwargs(kwargs))
        logits = self.score(outputs.last_hidden_state)
        batch = logits.shape[0]
        pad_id = self.config.pad_token_id
        if pad_id is None and batch != 1:
            raise ValueError("Batches of more than one sequence need config.pad_token_id to find each last token.")
        if pad_id is None or input_ids is None:
            last = torch.full((batch,), -1, device=logits.device)
        else:
            not_pad = (input_ids != pad_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * not_pad).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> torch.Tensor:
    """Regression, single-label or multi-label loss, chosen as transformers does."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.float().view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class LlamaForTokenClassification(LlamaPreTrainedModel):
    """Llama with a per-token classification head."""

    base_model_class: type[LlamaModel] = LlamaModel

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=getattr(config, "token_classification_bias", True))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **_base_kwargs(kwargs))
        logits = self.score(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class LlamaForQuestionAnswering(LlamaPreTrainedModel):
    """Llama with a span-extraction head (start and end logits)."""

    base_model_prefix = "transformer"  # transformers keeps this historical name for QA heads
    base_model_class: type[LlamaModel] = LlamaModel

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @property
    def decoder(self) -> LlamaModel:
        """The decoder stack (stored under ``base_model_prefix``)."""
        return getattr(self, self.base_model_prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.embed_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput:
        outputs = self.decoder(input_ids=input_ids, attention_mask=attention_mask, **_base_kwargs(kwargs))
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            limit = start_logits.size(1)
            start = start_positions.clamp(0, limit)
            end = end_positions.clamp(0, limit)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=limit)
                + F.cross_entropy(end_logits, end, ignore_index=limit)
            ) / 2
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
