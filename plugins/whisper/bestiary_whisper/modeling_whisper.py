"""Whisper: a transformer encoder over log-mel spectrograms and a text decoder attending to it.

The encoder turns 30 s of 80 (or 128) mel bins at 100 frames per second into
1500 positions: two convolutions (the second with stride 2), fixed sinusoidal
positions, pre-norm transformer layers. The decoder is a pre-norm transformer
with learned positions, causal self-attention and cross-attention to the
encoder output; its output projection is tied to the token embedding.

Heads: :class:`WhisperModel` (encoder + decoder states),
:class:`WhisperForConditionalGeneration` (transcription and translation,
with ``generate``) and :class:`WhisperForAudioClassification` (encoder,
mean-pooled, classified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.errors import ProcessingError
from bestiary.generation.cache import Cache, DynamicCache, EncoderDecoderCache
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.nn.attention import AttentionMask, attend, build_attention_mask
from bestiary.outputs import (
    BaseModelOutput,
    ModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
)
from bestiary_whisper.configuration_whisper import WhisperConfig
from bestiary_whisper.generation_whisper import WhisperGenerationMixin

_NO_MASK = AttentionMask(None, False)


@dataclass
class WhisperDecoderOutput(ModelOutput):
    """Output of the decoder stack: last hidden state, cache, and optional per-layer tensors."""

    last_hidden_state: Any = None
    past_key_values: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Return the [length, channels] sinusoidal table of the encoder: sines in the first half, cosines in the second."""
    if channels % 2:
        raise ValueError(f"Sinusoidal positions need an even number of channels, got {channels}.")
    step = math.log(max_timescale) / (channels // 2 - 1)
    inverse = torch.exp(-step * torch.arange(channels // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inverse[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then the labels shifted right (-100 become padding)."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class WhisperSinusoidalEmbedding(nn.Embedding):
    """The encoder's position table: stored in checkpoints, initialised with :func:`sinusoids`, not trained."""

    def reset_sinusoids(self) -> None:
        """Fill the table with sinusoids."""
        with torch.no_grad():
            self.weight.copy_(sinusoids(self.num_embeddings, self.embedding_dim).to(self.weight.dtype))


class WhisperAttention(nn.Module):
    """Multi-head attention; self-attention when ``key_value_states`` is None, cross-attention otherwise.

    The key projection has no bias. Queries are scaled before the product,
    as in the original implementation.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, layer_idx: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.layer_idx = layer_idx
        self.attn_implementation = "sdpa"
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, states: torch.Tensor, batch: int) -> torch.Tensor:
        return states.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        mask: AttentionMask = _NO_MASK,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states) * self.scaling, batch)
        if key_value_states is not None:

            def project() -> tuple[torch.Tensor, torch.Tensor]:
                return self._heads(self.k_proj(key_value_states), batch), self._heads(self.v_proj(key_value_states), batch)

            key, value = cache.cross_attention(self.layer_idx, project) if cache is not None else project()
        else:
            key = self._heads(self.k_proj(hidden_states), batch)
            value = self._heads(self.v_proj(hidden_states), batch)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
        output, weights = attend(
            query,
            key,
            value,
            mask,
            scaling=1.0,
            dropout=self.dropout if self.training else 0.0,
            eager=output_attentions or self.attn_implementation == "eager",
        )
        return self.out_proj(output.reshape(batch, length, -1)), weights


class WhisperEncoderLayer(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.self_attn = WhisperAttention(dim, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.activation_fn = get_activation(config.activation_function)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, Any]:
        attended, weights = self.self_attn(self.self_attn_layer_norm(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + F.dropout(attended, self.dropout, self.training)
        feed = self.activation_fn(self.fc1(self.final_layer_norm(hidden_states)))
        feed = self.fc2(F.dropout(feed, self.activation_dropout, self.training))
        hidden_states = hidden_states + F.dropout(feed, self.dropout, self.training)
        if hidden_states.dtype == torch.float16:  # keep fp16 activations finite
            limit = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = hidden_states.clamp(-limit, limit)
        return hidden_states, weights


class WhisperDecoderLayer(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, config: WhisperConfig, layer_idx: int) -> None:
        super().__init__()
        dim = config.d_model
        heads = config.decoder_attention_heads
        self.self_attn = WhisperAttention(dim, heads, config.attention_dropout, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = WhisperAttention(dim, heads, config.attention_dropout, layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self.activation_fn = get_activation(config.activation_function)
        self.fc1 = nn.Linear(dim, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: AttentionMask,
        encoder_hidden_states: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, Any, Any]:
        attended, self_weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states), mask=mask, cache=cache, output_attentions=output_attentions
        )
        hidden_states = hidden_states + F.dropout(attended, self.dropout, self.training)
        cross_weights = None
        if encoder_hidden_states is not None:
            attended, cross_weights = self.encoder_attn(
                self.encoder_attn_layer_norm(hidden_states),
                key_value_states=encoder_hidden_states,
                cache=cache,
                output_attentions=output_attentions,
            )
            hidden_states = hidden_states + F.dropout(attended, self.dropout, self.training)
        feed = self.activation_fn(self.fc1(self.final_layer_norm(hidden_states)))
        feed = self.fc2(F.dropout(feed, self.activation_dropout, self.training))
        hidden_states = hidden_states + F.dropout(feed, self.dropout, self.training)
        return hidden_states, self_weights, cross_weights


class WhisperPreTrainedModel(PreTrainedModel):
    """Shared loading and initialisation of Whisper models."""

    config_class = WhisperConfig
    base_model_prefix = "model"
    main_input_name = "input_features"

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, WhisperSinusoidalEmbedding):
            module.reset_sinusoids()
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, WhisperForAudioClassification) and hasattr(module, "layer_weights"):
            module.layer_weights.data.fill_(1.0 / (self.config.num_hidden_layers + 1))

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Number of encoder positions for ``input_lengths`` mel frames."""
        return (input_lengths - 1) // 2 + 1


class WhisperEncoder(nn.Module):
    """Convolutional stem, sinusoidal positions and pre-norm transformer layers over a mel spectrogram."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.config = config
        self.embed_scale = math.sqrt(dim) if config.scale_embedding else 1.0
        self.conv1 = nn.Conv1d(config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.embed_positions = WhisperSinusoidalEmbedding(config.max_source_positions, dim)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)

    def get_input_embeddings(self) -> nn.Module:
        return self.conv1

    def forward(
        self,
        input_features: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """Encode [batch, mel bins, frames] features (``attention_mask`` is accepted and unused, as in transformers)."""
        expected = self.config.num_segment_frames
        if input_features.dim() != 3 or input_features.shape[-1] != expected:
            raise ProcessingError(
                f"Whisper's encoder takes input_features shaped [batch, {self.config.num_mel_bins}, {expected}]; got "
                f"{list(input_features.shape)}. Pad or cut the log-mel spectrogram to {expected} frames "
                "(WhisperFeatureExtractor does it), or use generate() for longer audio."
            )
        hidden = F.gelu(self.conv1(input_features))
        hidden = F.gelu(self.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + self.embed_positions.weight.to(hidden.dtype)
        hidden = F.dropout(hidden, self.config.dropout, self.training)
        all_hidden: list[torch.Tensor] = []
        all_attentions: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            if self.training and self.config.encoder_layerdrop > 0 and torch.rand([]) < self.config.encoder_layerdrop:
                continue
            hidden, weights = layer(hidden, output_attentions)
            if output_attentions:
                all_attentions.append(weights)
        hidden = self.layer_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return BaseModelOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


class WhisperDecoder(nn.Module):
    """Token and learned position embeddings, pre-norm decoder layers with cross-attention, final norm."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, dim, config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_target_positions, dim)
        self.layers = nn.ModuleList(WhisperDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(dim)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        cache_position: torch.LongTensor | None = None,
    ) -> WhisperDecoderOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ProcessingError("Pass exactly one of decoder_input_ids and decoder_inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = past_key_values
        if use_cache and cache is None:
            cache = EncoderDecoderCache()
        elif isinstance(cache, Cache) and not isinstance(cache, EncoderDecoderCache):
            cache = EncoderDecoderCache(cache, DynamicCache())
        past_length = cache.get_seq_length() if cache is not None else 0
        length = inputs_embeds.shape[1]
        if past_length + length > self.config.max_target_positions:
            raise ProcessingError(
                f"The decoder input reaches position {past_length + length}, beyond max_target_positions="
                f"{self.config.max_target_positions}. Shorten the prompt or max_new_tokens."
            )
        if cache_position is None:
            cache_position = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        hidden = inputs_embeds + self.embed_positions(position_ids).to(inputs_embeds.dtype)
        hidden = F.dropout(hidden, self.config.dropout, self.training)
        all_hidden: list[torch.Tensor] = []
        self_attentions: list[torch.Tensor] = []
        cross_attentions: list[torch.Tensor] = []
        mask = None
        for layer_idx, layer in enumerate(self.layers):
            if mask is None:
                keys = cache.key_positions(layer_idx, cache_position) if cache is not None else cache_position
                mask = build_attention_mask(attention_mask, cache_position, keys, hidden.dtype)
            if output_hidden_states:
                all_hidden.append(hidden)
            if self.training and self.config.decoder_layerdrop > 0 and torch.rand([]) < self.config.decoder_layerdrop:
                continue
            hidden, self_weights, cross_weights = layer(hidden, mask, encoder_hidden_states, cache, output_attentions)
            if output_attentions:
                self_attentions.append(self_weights)
                cross_attentions.append(cross_weights)
        hidden = self.layer_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return WhisperDecoderOutput(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and encoder_hidden_states is not None else None,
        )


def _as_encoder_output(encoder_outputs: Any) -> BaseModelOutput:
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, torch.Tensor):
        return BaseModelOutput(last_hidden_state=encoder_outputs)
    parts = tuple(encoder_outputs)
    return BaseModelOutput(
        last_hidden_state=parts[0],
        hidden_states=parts[1] if len(parts) > 1 else None,
        attentions=parts[2] if len(parts) > 2 else None,
    )


class WhisperModel(WhisperPreTrainedModel):
    """Encoder and decoder without a head; returns the decoder's last hidden state and the encoder output."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        self.encoder = WhisperEncoder(config)
        self.decoder = WhisperDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.embed_tokens = value

    def get_encoder(self) -> WhisperEncoder:
        """The audio encoder."""
        return self.encoder

    def get_decoder(self) -> WhisperDecoder:
        """The text decoder."""
        return self.decoder

    def freeze_encoder(self) -> None:
        """Stop gradients through the encoder."""
        self.encoder.requires_grad_(False)

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: EncoderDecoderCache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Any,
    ) -> Seq2SeqModelOutput:
        """Encode ``input_features`` (unless ``encoder_outputs`` is given) and decode ``decoder_input_ids``.

        ``attention_mask`` (over mel frames) is accepted for compatibility and
        not used: Whisper attends to the whole 30 s window.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if encoder_outputs is None:
            if input_features is None:
                raise ProcessingError("WhisperModel needs input_features (log-mel spectrogram) or encoder_outputs.")
            encoder_outputs = self.encoder(input_features, output_attentions, output_hidden_states)
        else:
            encoder_outputs = _as_encoder_output(encoder_outputs)
        decoded = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            past_key_values=past_key_values if past_key_values is not None else cache,
            inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoded.last_hidden_state,
            past_key_values=decoded.past_key_values,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class WhisperForConditionalGeneration(WhisperGenerationMixin, WhisperPreTrainedModel):
    """Whisper with its language-modelling head: transcription and translation with ``generate()``."""

    _tied_weights_keys = {"proj_out.weight": "model.decoder.embed_tokens.weight"}

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        self.model = WhisperModel(config)
        self.proj_out = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.max_target_positions = config.max_target_positions
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.decoder.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.proj_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.proj_out = value

    def get_encoder(self) -> WhisperEncoder:
        """The audio encoder."""
        return self.model.encoder

    def get_decoder(self) -> WhisperDecoder:
        """The text decoder."""
        return self.model.decoder

    def freeze_encoder(self) -> None:
        """Stop gradients through the encoder."""
        self.model.freeze_encoder()

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: EncoderDecoderCache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Return next-token logits over the vocabulary (and the loss when ``labels`` are given)."""
        if labels is not None:
            if labels.shape[1] > self.max_target_positions:
                raise ProcessingError(
                    f"labels have {labels.shape[1]} tokens; Whisper's decoder takes at most "
                    f"max_target_positions={self.max_target_positions}. Truncate the transcripts."
                )
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_features,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values if past_key_values is not None else cache,
            decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_position_ids=decoder_position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        logits = self.proj_out(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device))
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


class WhisperForAudioClassification(WhisperPreTrainedModel):
    """Whisper's encoder with a projection, mean pooling over time and a linear classifier."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        self.encoder = WhisperEncoder(config)
        if config.use_weighted_layer_sum:
            layers = config.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.full((layers,), 1.0 / layers))
        self.projector = nn.Linear(config.d_model, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.conv1

    def get_encoder(self) -> WhisperEncoder:
        """The audio encoder."""
        return self.encoder

    def freeze_encoder(self) -> None:
        """Stop gradients through the encoder."""
        self.encoder.requires_grad_(False)

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Return class logits for each recording (and the cross-entropy loss with ``labels``)."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        weighted = self.config.use_weighted_layer_sum
        if encoder_outputs is None:
            if input_features is None:
                raise ProcessingError("WhisperForAudioClassification needs input_features or encoder_outputs.")
            encoder_outputs = self.encoder(input_features, output_attentions, output_hidden_states or weighted)
        else:
            encoder_outputs = _as_encoder_output(encoder_outputs)
        if weighted:
            stacked = torch.stack(encoder_outputs.hidden_states, dim=1)
            weights = F.softmax(self.layer_weights, dim=-1).view(-1, 1, 1)
            hidden = (stacked * weights).sum(dim=1)
        else:
            hidden = encoder_outputs.last_hidden_state
        pooled = self.projector(hidden).mean(dim=1)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.config.num_labels), labels.view(-1).to(logits.device))
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
