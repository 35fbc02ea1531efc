"""Every first-party plugin passes the conformance kit (bestiary.testing)."""

from __future__ import annotations

import pytest
import torch

from bestiary.registry import get_registry
from bestiary.testing import check_plugin

TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=40, pad_token_id=0)
TINY_CONFIGS: dict[str, dict] = {
    "llama": TINY_TEXT,
    "mistral": TINY_TEXT,
    "qwen2": TINY_TEXT,
    "bert": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=40),
    "dpr": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=40),
    "swin": dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2),
    "superpoint": dict(encoder_hidden_sizes=[4, 4, 8, 8], decoder_hidden_size=16, keypoint_decoder_dim=65,
                       descriptor_decoder_dim=16),
    "wav2vec2": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     conv_dim=[8, 8], conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=8,
                     num_conv_pos_embedding_groups=2, vocab_size=12),
}


def _whisper_inputs(config, model):
    features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions)
    if model.main_input_name == "input_features" and "decoder_input_ids" in model.forward.__code__.co_varnames:
        return {"input_features": features, "decoder_input_ids": torch.tensor([[1, 2]])}
    return {"input_features": features}


DUMMY_INPUTS = {"whisper": _whisper_inputs}
TINY_CONFIGS["whisper"] = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                               max_source_positions=16, max_target_positions=32, vocab_size=60, pad_token_id=1,
                               bos_token_id=2, eos_token_id=2, decoder_start_token_id=3)
TINY_CONFIGS["timm_backbone"] = dict(backbone="resnet18", out_indices=[1, 2])
TINY_CONFIGS["qwen2_vl"] = {
    "text_config": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "num_key_value_heads": 2,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1]}},
    "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2},
    "image_token_id": 60, "video_token_id": 61, "vision_start_token_id": 62, "vision_end_token_id": 63,
}
TINY_CONFIGS["sam"] = {
    "vision_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 64,
                      "patch_size": 16, "output_channels": 8, "window_size": 2, "global_attn_indexes": [0], "num_pos_feats": 4,
                      "mlp_dim": 32},
    "prompt_encoder_config": {"hidden_size": 8, "image_size": 64, "patch_size": 16, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_dim": 16,
                            "iou_head_hidden_dim": 8},
}
# Models whose forward needs structured inputs (prompts, images with grids, paired encoders) are
# round-tripped but not run here; their own test suites run them against transformers.
SKIP_FORWARD = {"bert": {"multiple-choice"}, "sam": {"model", "mask-generation"}, "qwen2_vl": {"model", "image-text-to-text", "vision2seq"},
                "superpoint": set(), "timm_backbone": {"backbone"}}


def first_party_plugins() -> list[str]:
    registry = get_registry()
    return sorted(p.distribution for p in registry.plugins.values() if p.architectures and p.distribution.startswith("bestiary-"))


@pytest.mark.parametrize("distribution", first_party_plugins())
def test_first_party_plugin_conforms(distribution, tmp_path):
    check_plugin(distribution, tmp_path, tiny_configs=TINY_CONFIGS, dummy_inputs=DUMMY_INPUTS, skip_tasks=SKIP_FORWARD)


def test_the_kit_reports_failures(tmp_path):
    with pytest.raises(AssertionError, match="not installed"):
        check_plugin("bestiary-does-not-exist", tmp_path)
