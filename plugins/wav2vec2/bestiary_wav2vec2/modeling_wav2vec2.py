"""Wav2Vec2: a convolutional feature encoder over raw audio, then a transformer encoder.

The feature encoder strides through 16 kHz audio (320 samples = 20 ms per
frame with the default convolutions). Its first convolution is group-normed
(``feat_extract_norm="group"``) or every convolution is layer-normed
(``"layer"``). Frames are layer-normed and projected, get a convolutional
relative position embedding (weight-normed, grouped), and go through
post-norm transformer layers, or pre-norm ones with ``do_stable_layer_norm``.

Heads: :class:`Wav2Vec2Model`, :class:`Wav2Vec2ForCTC` (per-frame
characters) and :class:`Wav2Vec2ForSequenceClassification` (mean-pooled
clip labels).

With an attention mask, padded audio never changes the frames of the real
audio in the layer-norm variant: padded frames are zeroed before the
position convolution and masked out of attention. (Group norm normalises
each channel over the whole padded clip, so base models are not padding
invariant; they were trained without attention masks.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bestiary.errors import ConfigError, ProcessingError
from bestiary.modeling import PreTrainedModel
from bestiary.nn.activations import get_activation
from bestiary.nn.attention import AttentionMask, attend
from bestiary.outputs import CausalLMOutput, ModelOutput, SequenceClassifierOutput
from bestiary_wav2vec2.configuration_wav2vec2 import Wav2Vec2Config


@dataclass
class Wav2Vec2BaseModelOutput(ModelOutput):
    """Output of :class:`Wav2Vec2Model`: encoder states and the normalised convolutional features."""

    last_hidden_state: Any = None
    extract_features: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


# -- feature encoder ---------------------------------------------------------------------------
class Wav2Vec2ConvLayer(nn.Module):
    """One convolution of the feature encoder, with no norm, a group norm or a layer norm, then the activation."""

    def __init__(self, config: Wav2Vec2Config, layer_id: int, norm: str | None) -> None:
        super().__init__()
        in_channels = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_channels = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size=config.conv_kernel[layer_id],
            stride=config.conv_stride[layer_id],
            bias=config.conv_bias,
        )
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(num_groups=out_channels, num_channels=out_channels, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        self.activation = get_activation(config.feat_extract_activation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states)
        if self.norm_kind == "group":
            hidden_states = self.layer_norm(hidden_states)
        elif self.norm_kind == "layer":
            hidden_states = self.layer_norm(hidden_states.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(hidden_states)


class Wav2Vec2FeatureEncoder(nn.Module):
    """The stack of convolutions that turns [batch, samples] audio into [batch, channels, frames]."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        if config.feat_extract_norm == "group":
            norms = ["group"] + [None] * (config.num_feat_extract_layers - 1)
        elif config.feat_extract_norm == "layer":
            norms = ["layer"] * config.num_feat_extract_layers
        else:
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got {config.feat_extract_norm!r}.")
        self.conv_layers = nn.ModuleList(Wav2Vec2ConvLayer(config, i, norm) for i, norm in enumerate(norms))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values[:, None]
        for layer in self.conv_layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class Wav2Vec2FeatureProjection(nn.Module):
    """Layer norm of the convolutional features, then a projection to the transformer width."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(hidden_states)
        return self.dropout(self.projection(normed)), normed


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    """Relative positions as a wide grouped convolution (weight-normed over the kernel axis)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove_last = 1 if kernel % 2 == 0 else 0
        self.activation = get_activation(config.feat_extract_activation)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states.transpose(1, 2))
        if self.remove_last:
            hidden_states = hidden_states[:, :, : -self.remove_last]
        return self.activation(hidden_states).transpose(1, 2)


# -- transformer -------------------------------------------------------------------------------
class Wav2Vec2Attention(nn.Module):
    """Bidirectional multi-head self-attention."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.attn_implementation = "sdpa"
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, hidden_states: torch.Tensor, mask: AttentionMask, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        output, weights = attend(
            heads(self.q_proj(hidden_states)),
            heads(self.k_proj(hidden_states)),
            heads(self.v_proj(hidden_states)),
            mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            eager=output_attentions or self.attn_implementation == "eager",
        )
        return self.out_proj(output.reshape(batch, length, -1)), weights


class Wav2Vec2FeedForward(nn.Module):
    """Two linear layers with the hidden activation between them."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(hidden_states)))
        return self.output_dropout(self.output_dense(hidden_states))


class Wav2Vec2AttnAdapterLayer(nn.Module):
    """A small bottleneck added after each pre-norm layer (MMS language adapters)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.linear_1 = nn.Linear(config.hidden_size, config.adapter_attn_dim)
        self.act_fn = nn.ReLU()
        self.linear_2 = nn.Linear(config.adapter_attn_dim, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_fn(self.linear_1(self.norm(hidden_states))))


class Wav2Vec2EncoderLayer(nn.Module):
    """Transformer layer; post-norm by default, pre-norm (``stable``) for the layer-norm models."""

    def __init__(self, config: Wav2Vec2Config, stable: bool) -> None:
        super().__init__()
        self.stable = stable
        self.attention = Wav2Vec2Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = Wav2Vec2FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.adapter_layer = Wav2Vec2AttnAdapterLayer(config) if stable and config.adapter_attn_dim else None

    def forward(
        self, hidden_states: torch.Tensor, mask: AttentionMask, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        if self.stable:
            attended, weights = self.attention(self.layer_norm(hidden_states), mask, output_attentions)
            hidden_states = residual + self.dropout(attended)
            hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
            if self.adapter_layer is not None:
                hidden_states = hidden_states + self.adapter_layer(hidden_states)
            return hidden_states, weights
        attended, weights = self.attention(hidden_states, mask, output_attentions)
        hidden_states = self.layer_norm(residual + self.dropout(attended))
        hidden_states = self.final_layer_norm(hidden_states + self.feed_forward(hidden_states))
        return hidden_states, weights


class Wav2Vec2Encoder(nn.Module):
    """Position convolution and transformer layers (post-norm, or pre-norm with a final norm when ``stable``)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.stable = config.do_stable_layer_norm
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(Wav2Vec2EncoderLayer(config, self.stable) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        mask = AttentionMask(None, False)
        if attention_mask is not None:
            keep = attention_mask.bool()
            hidden_states = hidden_states.masked_fill(~keep[..., None], 0.0)
            if not bool(keep.all()):
                additive = torch.zeros(keep.shape, dtype=hidden_states.dtype, device=hidden_states.device)
                additive = additive.masked_fill(~keep, torch.finfo(hidden_states.dtype).min)
                mask = AttentionMask(additive[:, None, None, :], False)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.stable:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        all_hidden: list[torch.Tensor] = []
        all_attentions: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop:
                continue
            hidden_states, weights = layer(hidden_states, mask, output_attentions)
            if output_attentions:
                all_attentions.append(weights)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        if self.stable:
            hidden_states = self.layer_norm(hidden_states)
        return (
            hidden_states,
            tuple(all_hidden) if output_hidden_states else None,
            tuple(all_attentions) if output_attentions else None,
        )


class Wav2Vec2AdapterLayer(nn.Module):
    """A strided convolution with a gated linear unit, shortening the sequence."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            config.output_hidden_size,
            2 * config.output_hidden_size,
            config.adapter_kernel_size,
            stride=config.adapter_stride,
            padding=1,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.glu(self.conv(hidden_states), dim=1)


class Wav2Vec2Adapter(nn.Module):
    """Optional projection and strided adapter layers after the encoder (``add_adapter``)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        if config.output_hidden_size != config.hidden_size:
            self.proj = nn.Linear(config.hidden_size, config.output_hidden_size)
            self.proj_layer_norm = nn.LayerNorm(config.output_hidden_size)
        else:
            self.proj = self.proj_layer_norm = None
        self.layers = nn.ModuleList(Wav2Vec2AdapterLayer(config) for _ in range(config.num_adapter_layers))
        self.layerdrop = config.layerdrop

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            hidden_states = self.proj_layer_norm(self.proj(hidden_states))
        hidden_states = hidden_states.transpose(1, 2)
        for layer in self.layers:
            if not self.training or torch.rand([]) > self.layerdrop:
                hidden_states = layer(hidden_states)
        return hidden_states.transpose(1, 2)


# -- models ------------------------------------------------------------------------------------
class Wav2Vec2PreTrainedModel(PreTrainedModel):
    """Shared loading, initialisation and length arithmetic of Wav2Vec2 models."""

    config_class = Wav2Vec2Config
    base_model_prefix = "wav2vec2"
    main_input_name = "input_values"
    # Checkpoints saved before torch's parametrized weight norm name its two tensors weight_g and weight_v.
    _checkpoint_key_renames = [
        (r"pos_conv_embed\.conv\.weight_g$", "pos_conv_embed.conv.parametrizations.weight.original0"),
        (r"pos_conv_embed\.conv\.weight_v$", "pos_conv_embed.conv.parametrizations.weight.original1"),
    ]
    # Pretraining-only tensors (quantizer, projections) are not used by these heads.
    _keys_to_ignore_on_load_unexpected = [r"^quantizer\.", r"^project_q\.", r"^project_hid\."]
    _keys_to_ignore_on_load_missing = [r"masked_spec_embed$"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, Wav2Vec2PositionalConvEmbedding):
            conv = module.conv
            weight_std = 2 * math.sqrt(1 / (conv.kernel_size[0] * conv.in_channels))
            with torch.no_grad():
                conv.weight = torch.randn(conv.parametrizations.weight.original1.shape) * weight_std
                conv.bias.zero_()
        elif isinstance(module, Wav2Vec2FeatureProjection):
            bound = math.sqrt(1 / module.projection.in_features)
            module.projection.weight.data.uniform_(-bound, bound)
            module.projection.bias.data.uniform_(-bound, bound)
        elif isinstance(module, nn.Conv1d) and not nn.utils.parametrize.is_parametrized(module):
            nn.init.kaiming_normal_(module.weight.data)
            if module.bias is not None:
                bound = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                module.bias.data.uniform_(-bound, bound)
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, Wav2Vec2Model) and getattr(module, "masked_spec_embed", None) is not None:
            module.masked_spec_embed.data.uniform_()
        elif isinstance(module, Wav2Vec2ForSequenceClassification) and hasattr(module, "layer_weights"):
            module.layer_weights.data.fill_(1.0 / (self.config.num_hidden_layers + 1))

    def _get_feat_extract_output_lengths(
        self, input_lengths: torch.Tensor | int, add_adapter: bool | None = None
    ) -> torch.Tensor | int:
        """Number of output frames for ``input_lengths`` audio samples."""
        add_adapter = self.config.add_adapter if add_adapter is None else add_adapter

        def convolved(length: Any, kernel: int, stride: int) -> Any:
            if isinstance(length, torch.Tensor):
                return torch.div(length - kernel, stride, rounding_mode="floor") + 1
            return (length - kernel) // stride + 1

        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            input_lengths = convolved(input_lengths, kernel, stride)
        if add_adapter:
            for _ in range(self.config.num_adapter_layers):
                input_lengths = convolved(input_lengths, 1, self.config.adapter_stride)
        return input_lengths

    def _get_feature_vector_attention_mask(
        self, feature_vector_length: int, attention_mask: torch.Tensor, add_adapter: bool | None = None
    ) -> torch.Tensor:
        """Turn a mask over audio samples into a mask over output frames (right padding)."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1), add_adapter=add_adapter).long()
        frames = torch.arange(feature_vector_length, device=attention_mask.device)
        return frames[None, :] < lengths[:, None]


def _check_audio(input_values: torch.Tensor | None, minimum: int) -> None:
    if input_values is None:
        raise ProcessingError("Wav2Vec2 needs input_values: [batch, samples] audio at 16 kHz (Wav2Vec2FeatureExtractor).")
    if input_values.dim() != 2:
        raise ProcessingError(
            f"input_values must be [batch, samples]; got shape {list(input_values.shape)}. Downmix stereo audio "
            "and add a batch dimension (the feature extractor does both)."
        )
    if input_values.shape[-1] < minimum:
        raise ProcessingError(
            f"input_values has {input_values.shape[-1]} samples; Wav2Vec2's feature encoder needs at least {minimum} "
            "to produce one frame. Pad short clips."
        )


class Wav2Vec2Model(Wav2Vec2PreTrainedModel):
    """Feature encoder, projection and transformer encoder; returns frame states [batch, frames, hidden]."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__(config)
        self.feature_extractor = Wav2Vec2FeatureEncoder(config)
        self.feature_projection = Wav2Vec2FeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Wav2Vec2Encoder(config)
        self.adapter = Wav2Vec2Adapter(config) if config.add_adapter else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.feature_extractor

    def freeze_feature_encoder(self) -> None:
        """Stop gradients through the convolutional feature encoder."""
        self.feature_extractor.requires_grad_(False)

    def minimum_input_length(self) -> int:
        """The fewest samples that give one output frame."""
        length = 1
        for kernel, stride in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            length = (length - 1) * stride + kernel
        return length

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Wav2Vec2BaseModelOutput:
        """Encode [batch, samples] audio; ``attention_mask`` (1 on real samples) excludes right padding."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        _check_audio(input_values, self.minimum_input_length())
        features = self.feature_extractor(input_values).transpose(1, 2)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self._get_feature_vector_attention_mask(features.shape[1], attention_mask, add_adapter=False)
        hidden_states, features = self.feature_projection(features)
        if mask_time_indices is not None:
            hidden_states = hidden_states.clone()
            hidden_states[mask_time_indices.bool()] = self.masked_spec_embed.to(hidden_states.dtype)
        hidden_states, all_hidden, all_attentions = self.encoder(
            hidden_states, frame_mask, output_attentions, output_hidden_states
        )
        if self.adapter is not None:
            hidden_states = self.adapter(hidden_states)
        return Wav2Vec2BaseModelOutput(
            last_hidden_state=hidden_states,
            extract_features=features,
            hidden_states=all_hidden,
            attentions=all_attentions,
        )


class Wav2Vec2ForCTC(Wav2Vec2PreTrainedModel):
    """Wav2Vec2 with a linear layer giving per-frame character logits, trained with CTC."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__(config)
        if config.vocab_size is None:
            raise ConfigError(
                "Wav2Vec2ForCTC needs config.vocab_size (the size of the character vocabulary); set it, for example "
                "Wav2Vec2ForCTC.from_pretrained(path, vocab_size=len(tokenizer))."
            )
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        width = config.output_hidden_size if config.add_adapter else config.hidden_size
        self.lm_head = nn.Linear(width, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.wav2vec2.feature_extractor

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def freeze_feature_encoder(self) -> None:
        """Stop gradients through the convolutional feature encoder."""
        self.wav2vec2.freeze_feature_encoder()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutput:
        """Return [batch, frames, vocab] logits (and the CTC loss with ``labels``, -100 for padding)."""
        outputs = self.wav2vec2(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self._ctc_loss(logits, labels, attention_mask, input_values)
        return CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _ctc_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None, input_values: torch.Tensor
    ) -> torch.Tensor:
        if int(labels.max()) >= self.config.vocab_size:
            raise ProcessingError(f"labels hold ids >= vocab_size ({self.config.vocab_size}); check the tokenizer.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        input_lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
        valid = labels >= 0
        target_lengths = valid.sum(-1)
        targets = labels.masked_select(valid)
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
        with torch.backends.cudnn.flags(enabled=False):
            return F.ctc_loss(
                log_probs,
                targets,
                input_lengths,
                target_lengths,
                blank=self.config.pad_token_id,
                reduction=self.config.ctc_loss_reduction,
                zero_infinity=self.config.ctc_zero_infinity,
            )


class Wav2Vec2ForSequenceClassification(Wav2Vec2PreTrainedModel):
    """Wav2Vec2 with a projection, mean pooling over real frames and a linear classifier."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__(config)
        if config.add_adapter:
            raise ConfigError("Wav2Vec2ForSequenceClassification does not support adapters (config.add_adapter=True).")
        self.wav2vec2 = Wav2Vec2Model(config)
        if config.use_weighted_layer_sum:
            layers = config.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.full((layers,), 1.0 / layers))
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.wav2vec2.feature_extractor

    def freeze_feature_encoder(self) -> None:
        """Stop gradients through the convolutional feature encoder."""
        self.wav2vec2.freeze_feature_encoder()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Return [batch, num_labels] logits (and the cross-entropy loss with ``labels``)."""
        weighted = self.config.use_weighted_layer_sum
        outputs = self.wav2vec2(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=True if weighted else output_hidden_states,
        )
        if weighted:
            stacked = torch.stack(outputs.hidden_states, dim=1)
            hidden = (stacked * F.softmax(self.layer_weights, dim=-1).view(-1, 1, 1)).sum(dim=1)
        else:
            hidden = outputs.last_hidden_state
        hidden = self.projector(hidden)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            frames = self._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
            hidden = hidden.masked_fill(~frames[..., None], 0.0)
            pooled = hidden.sum(dim=1) / frames.sum(dim=1, keepdim=True).to(hidden.dtype)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.config.num_labels), labels.view(-1).to(logits.device))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
