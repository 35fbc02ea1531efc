"""DPR models: bestiary against transformers on tiny random checkpoints, AutoModel dispatch, both directions."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import bestiary.auto as auto
from bestiary.errors import ConfigError
from bestiary_dpr.configuration_dpr import DPRConfig
from bestiary_dpr.modeling_dpr import DPRContextEncoder, DPRQuestionEncoder, DPRReader

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
CLASSES = {
    "DPRQuestionEncoder": ("pooler_output",),
    "DPRContextEncoder": ("pooler_output",),
    "DPRReader": ("start_logits", "end_logits", "relevance_logits"),
}


def save_reference(name: str, folder, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(transformers, name)(transformers.DPRConfig(**{**TINY, **overrides})).eval()
    model.save_pretrained(folder)
    return model


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, TINY["vocab_size"], (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    ids[2, 7:], mask[2, 7:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def assert_close(expected: torch.Tensor, got: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    assert expected.shape == got.shape
    if mask is not None and tuple(expected.shape[:2]) == tuple(mask.shape):
        expected, got = expected[mask.bool()], got[mask.bool()]
    assert (expected - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("projection_dim", [0, 16])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_auto_model_gives_the_checkpoint_class_and_matches_transformers(name, projection_dim, tmp_path):
    if name == "DPRReader" and projection_dim:
        pytest.skip("the reader needs projection_dim=0 (see test_reader_refuses_a_projection)")
    reference = save_reference(name, tmp_path, projection_dim=projection_dim)
    ours = auto.AutoModel.from_pretrained(tmp_path)
    assert type(ours).__name__ == name  # dispatch on config.architectures, not only model_type
    batch = inputs()
    with torch.no_grad():
        expected, got = reference(**batch), ours(**batch)
    for field in CLASSES[name]:
        assert_close(getattr(expected, field), getattr(got, field), batch["attention_mask"])


@pytest.mark.parametrize("name", ["DPRQuestionEncoder", "DPRContextEncoder"])
def test_encoders_default_mask_and_token_types_match(name, tmp_path):
    reference = save_reference(name, tmp_path, projection_dim=8)
    ours = auto.AutoModel.from_pretrained(tmp_path)
    ids = inputs()["input_ids"]
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    with torch.no_grad():
        assert_close(reference(input_ids=ids).pooler_output, ours(input_ids=ids).pooler_output)
        assert_close(reference(input_ids=ids, token_type_ids=types).pooler_output,
                     ours(input_ids=ids, token_type_ids=types).pooler_output)


def test_hidden_states_and_attentions_match(tmp_path):
    reference = save_reference("DPRReader", tmp_path)
    reference.set_attn_implementation("eager")
    ours = auto.AutoModel.from_pretrained(tmp_path)
    batch = inputs()
    with torch.no_grad():
        expected = reference(**batch, output_hidden_states=True, output_attentions=True)
        got = ours(**batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == TINY["num_hidden_layers"] + 1
    for a, b in zip(expected.hidden_states, got.hidden_states):
        assert_close(a, b, batch["attention_mask"])
    for a, b in zip(expected.attentions, got.attentions):
        assert_close(a, b)


def test_config_without_architectures_defaults_to_the_question_encoder(tmp_path):
    save_reference("DPRContextEncoder", tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert type(auto.AutoModel.from_pretrained(tmp_path)).__name__ == "DPRQuestionEncoder"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_bestiary_saved_checkpoints_load_in_transformers(name, tmp_path):
    save_reference(name, tmp_path / "reference")
    ours = auto.AutoModel.from_pretrained(tmp_path / "reference")
    ours.save_pretrained(tmp_path / "ours")
    back = getattr(transformers, name).from_pretrained(tmp_path / "ours").eval()
    batch = inputs()
    with torch.no_grad():
        expected, got = ours(**batch), back(**batch)
    for field in CLASSES[name]:
        assert_close(getattr(expected, field), getattr(got, field), batch["attention_mask"])
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [name]


def test_random_models_build_and_tuples_follow_return_dict():
    config = DPRConfig(**TINY, projection_dim=8)
    batch = inputs()
    with torch.no_grad():
        question = DPRQuestionEncoder(config).eval()(**batch, return_dict=False)
        context = DPRContextEncoder(config).eval()(**batch)
        reader = DPRReader(DPRConfig(**TINY)).eval()(**batch)
    assert question[0].shape == context.pooler_output.shape == (3, 8)
    assert reader.start_logits.shape == reader.end_logits.shape == (3, 10)
    assert reader.relevance_logits.shape == (3,)


def test_reader_refuses_a_projection():
    with pytest.raises(ConfigError, match="projection_dim=0"):
        DPRReader(DPRConfig(**TINY, projection_dim=8))


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="projection_dim"):
        DPRConfig.from_dict({**TINY, "projection_dim": -1})
    with pytest.raises(ConfigError, match="num_attention_heads"):
        DPRConfig.from_dict({**TINY, "hidden_size": 30})
