"""SAM: bestiary against transformers 5.24.0 on a tiny random checkpoint, both directions (fp32, 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_sam")

from bestiary import auto
from bestiary.errors import ConfigError, ProcessingError
from bestiary_sam.configuration_sam import SamConfig
from bestiary_sam.modeling_sam import SamModel

from tests.plugins.sam.sam_builders import reference_config

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(parity_checkpoint):
    reference = transformers.SamModel.from_pretrained(parity_checkpoint).eval()
    ours = SamModel.from_pretrained(parity_checkpoint)
    return reference, ours


def prompts(batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "pixel_values": torch.randn(batch, 3, 64, 64, generator=generator),
        "points": torch.rand(batch, 3, 2, 2, generator=generator, dtype=torch.float64) * 64,
        "labels": torch.tensor([[[1, 0], [1, 1], [0, -10]]] * batch),
        "boxes": torch.sort(torch.rand(batch, 3, 2, 2, generator=generator) * 64, dim=2).values.reshape(batch, 3, 4),
        "masks": torch.randn(batch, 1, 32, 32, generator=generator) * 3,
    }


PROMPT_KINDS = {
    "point": ("points", "labels"),
    "box": ("boxes",),
    "mask": ("masks",),
    "point+box": ("points", "labels", "boxes"),
    "point+mask": ("points", "labels", "masks"),
    "box+mask": ("boxes", "masks"),
    "point+box+mask": ("points", "labels", "boxes", "masks"),
    "point, default labels": ("points",),
}
KEYS = {"points": "input_points", "labels": "input_labels", "boxes": "input_boxes", "masks": "input_masks"}


def assert_close(reference: torch.Tensor, ours: torch.Tensor) -> None:
    assert reference.shape == ours.shape
    assert (reference - ours).abs().max().item() <= TOLERANCE


def test_config_round_trip_is_transformers_config_json(parity_checkpoint, tmp_path):
    stored = json.loads((parity_checkpoint / "config.json").read_text())
    config = SamConfig.from_pretrained(parity_checkpoint)
    assert config.vision_config.window_size == 3 and config.prompt_encoder_config.image_embedding_size == 8
    written = config.to_dict()
    for part in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        assert written[part] == stored[part]
    config.save_pretrained(tmp_path)
    again = transformers.SamConfig.from_pretrained(tmp_path)
    assert (
        again.vision_config.to_dict()
        == transformers.SamConfig.from_pretrained(parity_checkpoint).vision_config.to_dict()
    )


def test_config_accepts_transformers_sub_configs_and_checks_consistency():
    reference = reference_config()
    config = SamConfig(
        vision_config=reference.vision_config,
        prompt_encoder_config=reference.prompt_encoder_config.to_dict(),
        mask_decoder_config=reference.mask_decoder_config,
    )
    assert config.vision_config.hidden_size == 32 and config.mask_decoder_config.hidden_size == 16
    assert SamConfig().vision_config.mlp_dim == 3072 and SamConfig().vision_config.scale == 384
    with pytest.raises(ConfigError, match="num_pos_feats"):
        SamConfig.from_dict(
            {"vision_config": reference.vision_config.to_dict(), "prompt_encoder_config": {"hidden_size": 32}}
        )
    with pytest.raises(ValueError, match="num_pos_feats"):  # direct construction: pydantic's ValidationError
        SamConfig(vision_config=reference.vision_config, prompt_encoder_config={"hidden_size": 32})
    with pytest.raises(ConfigError, match="global_attn_indexes"):
        SamConfig.from_dict({"vision_config": {"num_hidden_layers": 2, "global_attn_indexes": [5]}})


def test_image_embeddings_match(models):
    reference, ours = models
    pixel_values = prompts()["pixel_values"]
    with torch.no_grad():
        assert_close(reference.get_image_embeddings(pixel_values), ours.get_image_embeddings(pixel_values))


@pytest.mark.parametrize("kind", sorted(PROMPT_KINDS))
@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_masks_and_iou_scores_match(models, kind, multimask):
    reference, ours = models
    data = prompts()
    inputs = {KEYS[name]: data[name] for name in PROMPT_KINDS[kind]}
    with torch.no_grad():
        expected = reference(pixel_values=data["pixel_values"], multimask_output=multimask, **inputs)
        got = ours(pixel_values=data["pixel_values"], multimask_output=multimask, **inputs)
    assert got.pred_masks.shape[2] == (3 if multimask else 1)
    assert_close(expected.pred_masks, got.pred_masks)
    assert_close(expected.iou_scores, got.iou_scores)


def test_precomputed_embeddings_give_the_same_masks(models):
    reference, ours = models
    data = prompts(batch=3)
    with torch.no_grad():
        embeddings = ours.get_image_embeddings(data["pixel_values"])
        direct = ours(pixel_values=data["pixel_values"], input_boxes=data["boxes"])
        reused = ours(image_embeddings=embeddings, input_boxes=data["boxes"])
        expected = reference(image_embeddings=embeddings, input_boxes=data["boxes"])
    assert torch.equal(direct.pred_masks, reused.pred_masks)
    assert_close(expected.pred_masks, reused.pred_masks)


def test_one_image_of_a_batch_equals_the_image_alone(models):
    _, ours = models
    data = prompts(batch=2)
    with torch.no_grad():
        both = ours(pixel_values=data["pixel_values"], input_points=data["points"], input_labels=data["labels"])
        alone = ours(
            pixel_values=data["pixel_values"][1:], input_points=data["points"][1:], input_labels=data["labels"][1:]
        )
    assert_close(both.pred_masks[1:], alone.pred_masks)


def test_eager_attention_and_attention_outputs(models):
    _, ours = models
    data = prompts(batch=1)
    with torch.no_grad():
        sdpa = ours(pixel_values=data["pixel_values"], input_boxes=data["boxes"])
        ours.set_attn_implementation("eager")
        try:
            eager = ours(pixel_values=data["pixel_values"], input_boxes=data["boxes"], output_attentions=True)
        finally:
            ours.set_attn_implementation("sdpa")
    assert_close(sdpa.pred_masks, eager.pred_masks)
    assert len(eager.vision_attentions) == 3 and len(eager.mask_decoder_attentions) == 2
    global_attention = eager.vision_attentions[1]
    assert global_attention.shape == (1, 2, 64, 64)
    assert torch.allclose(global_attention.sum(-1), torch.ones(1, 2, 64))


def test_vision_hidden_states_match(models):
    reference, ours = models
    pixel_values = prompts(batch=1)["pixel_values"]
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, output_hidden_states=True).vision_hidden_states
        got = ours(pixel_values=pixel_values, output_hidden_states=True).vision_hidden_states
    assert len(got) == len(expected)
    for reference_state, state in zip(expected, got):
        assert_close(reference_state, state)


def test_auto_classes_serve_sam(parity_checkpoint):
    assert type(auto.AutoModelForMaskGeneration.from_pretrained(parity_checkpoint)) is SamModel
    assert type(auto.AutoModel.from_pretrained(parity_checkpoint)) is SamModel
    processor = auto.AutoProcessor.from_pretrained(parity_checkpoint)
    assert type(processor).__name__ == "SamProcessor" and processor.target_size == 64
    assert type(auto.AutoImageProcessor.from_pretrained(parity_checkpoint)).__name__ == "SamImageProcessor"


def test_loading_reports_nothing_missing_and_ties_the_positional_encoding(parity_checkpoint):
    model, report = SamModel.from_pretrained(parity_checkpoint, output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys and not report.mismatched_keys
    shared = model.shared_image_embedding.positional_embedding
    assert model.prompt_encoder.shared_embedding.positional_embedding is shared


def test_bestiary_checkpoint_loads_in_transformers(models, tmp_path):
    _, ours = models
    ours.save_pretrained(tmp_path)
    reloaded, info = transformers.SamModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    data = prompts(batch=1)
    with torch.no_grad():
        expected = reloaded.eval()(pixel_values=data["pixel_values"], input_points=data["points"][:, :1])
        got = ours(pixel_values=data["pixel_values"], input_points=data["points"][:, :1])
    assert_close(expected.pred_masks, got.pred_masks)
    assert_close(expected.iou_scores, got.iou_scores)


def test_random_init_from_config_runs():
    config = SamConfig.from_dict(reference_config().to_dict())
    torch.manual_seed(0)
    model = auto.AutoModelForMaskGeneration.from_config(config).eval()
    assert model.vision_encoder.layers[0].attn.rel_pos_h.abs().sum() == 0  # zero-initialised, like transformers
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 64, 64), input_points=torch.tensor([[[[10.0, 20.0]]]]))
    assert out.pred_masks.shape == (1, 1, 3, 32, 32) and out.iou_scores.shape == (1, 1, 3)


def test_input_errors_name_the_argument_and_the_fix(models):
    _, ours = models
    data = prompts(batch=1)
    with pytest.raises(ProcessingError, match="exactly one of pixel_values"):
        ours(input_boxes=data["boxes"])
    with pytest.raises(ProcessingError, match="64x64"):
        ours(pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ProcessingError, match="input_points must be 4-D"):
        ours(pixel_values=data["pixel_values"], input_points=torch.zeros(1, 2, 2))
    with pytest.raises(ProcessingError, match="one box per point prompt"):
        ours(pixel_values=data["pixel_values"], input_points=data["points"][:, :2], input_boxes=data["boxes"])
    with pytest.raises(ProcessingError, match="batch of 2"):
        ours(pixel_values=data["pixel_values"], input_points=torch.zeros(2, 1, 1, 2))


def test_plugin_and_config_modules_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, bestiary_sam, bestiary_sam.plugin, bestiary_sam.configuration_sam; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_older_config_files_with_generic_keys_load():
    """Hub SAM configs written by older transformers repeat every generic key inside each sub-config."""
    generic = {
        "_name_or_path": "",
        "architectures": None,
        "model_type": "",
        "torch_dtype": None,
        "return_dict": True,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        "num_beams": 1,
        "torchscript": False,
    }
    data = reference_config().to_dict()
    for part in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        data[part] = {**generic, **{k: v for k, v in data[part].items() if k != "model_type"}, "model_type": ""}
    data["initializer_factor"] = 1.0
    config = SamConfig.from_dict(data)
    assert config.vision_config.hidden_size == 32 and config.mask_decoder_config.num_multimask_outputs == 3
    assert config.to_dict()["vision_config"]["num_beams"] == 1  # unknown keys survive a round trip
    assert config.to_dict()["initializer_factor"] == 1.0
