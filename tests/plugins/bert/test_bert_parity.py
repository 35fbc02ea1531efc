"""BERT: bestiary against transformers on tiny random checkpoints, every head, both directions."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import bestiary.auto as auto
from bestiary.errors import ConfigError
from bestiary_bert.configuration_bert import BertConfig
from bestiary_bert.modeling_bert import BertForMaskedLM, BertModel

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)
# Auto class, output fields compared, extra kwargs of the config.
HEADS = {
    "model": ("AutoModel", ("last_hidden_state", "pooler_output"), {}),
    "pretraining": ("AutoModelForPreTraining", ("prediction_logits", "seq_relationship_logits"), {}),
    "masked-lm": ("AutoModelForMaskedLM", ("logits",), {}),
    "sequence-classification": ("AutoModelForSequenceClassification", ("logits",), {"num_labels": 3}),
    "token-classification": ("AutoModelForTokenClassification", ("logits",), {"num_labels": 5}),
    "question-answering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits"), {}),
    "next-sentence-prediction": ("AutoModelForNextSentencePrediction", ("logits",), {}),
    "multiple-choice": ("AutoModelForMultipleChoice", ("logits",), {}),
}


def save_reference(head: str, folder, **overrides) -> torch.nn.Module:
    """Build a seeded random transformers model for ``head`` and save it in ``folder``."""
    auto_name, _, extra = HEADS[head]
    config = transformers.BertConfig(**{**TINY, **extra, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, auto_name).from_config(config).eval()
    model.save_pretrained(folder)
    return model


def inputs(batch: int = 2, length: int = 11) -> dict[str, torch.Tensor]:
    """Ids with right padding in row 1 and a second segment (token type 1)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    ids[1, -4:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def choice_inputs(choices: int = 3) -> dict[str, torch.Tensor]:
    """[batch, choices, length] inputs for multiple choice."""
    flat = inputs(batch=2 * choices)
    return {key: value.view(2, choices, -1) for key, value in flat.items()}


def assert_close(expected: torch.Tensor, got: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Max abs difference <= 1e-4, on real (not padding) tokens when ``mask`` fits the leading dims."""
    assert expected.shape == got.shape
    if mask is not None and expected.dim() >= 2 and tuple(expected.shape[:2]) == tuple(mask.shape):
        expected, got = expected[mask.bool()], got[mask.bool()]
    assert (expected - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_matches_transformers(head, tmp_path):
    reference = save_reference(head, tmp_path)
    auto_name, fields, _ = HEADS[head]
    ours = getattr(auto, auto_name).from_pretrained(tmp_path)
    assert type(ours).__name__ == type(reference).__name__
    batch = choice_inputs() if head == "multiple-choice" else inputs()
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(**batch)
    for field in fields:
        assert_close(getattr(expected, field), getattr(got, field), batch["attention_mask"])


@pytest.mark.parametrize(
    "head, labels",
    [
        ("masked-lm", {"labels": torch.tensor([[-100, 5, 7] + [-100] * 8, [3] + [-100] * 10])}),
        ("sequence-classification", {"labels": torch.tensor([0, 2])}),
        ("token-classification", {"labels": torch.randint(0, 5, (2, 11), generator=torch.Generator().manual_seed(3))}),
        ("question-answering", {"start_positions": torch.tensor([1, 30]), "end_positions": torch.tensor([3, 4])}),
        ("next-sentence-prediction", {"labels": torch.tensor([0, 1])}),
        ("pretraining", {"labels": torch.full((2, 11), 4), "next_sentence_label": torch.tensor([1, 0])}),
    ],
)
def test_losses_match_transformers(head, labels, tmp_path):
    reference = save_reference(head, tmp_path)
    ours = getattr(auto, HEADS[head][0]).from_pretrained(tmp_path)
    batch = {**inputs(), **labels}
    with torch.no_grad():
        expected, got = reference(**batch).loss, ours(**batch).loss
    assert abs(expected.item() - got.item()) <= 1e-4


@pytest.mark.parametrize("problem_type, labels", [("regression", torch.tensor([[0.5], [1.5]])),
                                                  ("multi_label_classification", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))])
def test_sequence_classification_problem_types(problem_type, labels, tmp_path):
    num_labels = labels.shape[1]
    reference = save_reference("sequence-classification", tmp_path, num_labels=num_labels, problem_type=problem_type)
    ours = auto.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference(**inputs(), labels=labels).loss
        got = ours(**inputs(), labels=labels).loss
    assert abs(expected.item() - got.item()) <= 1e-4


def test_hidden_states_and_attentions_match_eager_reference(tmp_path):
    reference = save_reference("model", tmp_path)
    reference.set_attn_implementation("eager")
    ours = auto.AutoModel.from_pretrained(tmp_path)
    batch = inputs()
    with torch.no_grad():
        expected = reference(**batch, output_hidden_states=True, output_attentions=True)
        got = ours(**batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == TINY["num_hidden_layers"] + 1
    assert len(got.attentions) == TINY["num_hidden_layers"]
    for a, b in zip(expected.hidden_states, got.hidden_states):
        assert_close(a, b, batch["attention_mask"])
    for a, b in zip(expected.attentions, got.attentions):
        assert a.shape == b.shape == (2, TINY["num_attention_heads"], 11, 11)
        assert_close(a, b)  # padded keys get exactly zero weight in both


def test_sdpa_and_eager_paths_agree_and_tuples_follow_return_dict(tmp_path):
    save_reference("masked-lm", tmp_path)
    ours = auto.AutoModelForMaskedLM.from_pretrained(tmp_path)
    batch = inputs()
    with torch.no_grad():
        sdpa = ours(**batch).logits
        ours.set_attn_implementation("eager")
        eager = ours(**batch).logits
        as_tuple = ours(**batch, return_dict=False)
    assert_close(sdpa, eager, batch["attention_mask"])
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], eager)


def test_defaults_without_mask_or_token_types_match(tmp_path):
    reference = save_reference("model", tmp_path)
    ours = auto.AutoModel.from_pretrained(tmp_path)
    ids = inputs()["input_ids"][:1]
    with torch.no_grad():
        assert_close(reference(ids).last_hidden_state, ours(ids).last_hidden_state)
        embeds = ours.get_input_embeddings()(ids)
        assert_close(reference(inputs_embeds=embeds).pooler_output, ours(inputs_embeds=embeds).pooler_output)


@pytest.mark.parametrize("head", ["model", "masked-lm", "pretraining", "question-answering"])
def test_bestiary_saved_checkpoints_load_in_transformers(head, tmp_path):
    save_reference(head, tmp_path / "reference")
    ours = getattr(auto, HEADS[head][0]).from_pretrained(tmp_path / "reference")
    ours.save_pretrained(tmp_path / "ours")
    back = getattr(transformers, HEADS[head][0]).from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == type(ours).__name__
    batch = inputs()
    with torch.no_grad():
        expected, got = ours(**batch), back(**batch)
    for field in HEADS[head][1]:
        assert_close(getattr(expected, field), getattr(got, field), batch["attention_mask"])
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "bert" and saved["architectures"] == [type(ours).__name__]


def test_untied_masked_lm_keeps_its_own_decoder(tmp_path):
    reference = save_reference("masked-lm", tmp_path, tie_word_embeddings=False)
    ours = auto.AutoModelForMaskedLM.from_pretrained(tmp_path)
    decoder = ours.get_output_embeddings()
    assert decoder.weight is not ours.get_input_embeddings().weight
    assert decoder.bias is not ours.cls.predictions.bias
    with torch.no_grad():
        assert_close(reference(**inputs()).logits, ours(**inputs()).logits, inputs()["attention_mask"])


def test_tied_masked_lm_shares_embeddings_and_bias():
    model = BertForMaskedLM(BertConfig(**TINY))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert "cls.predictions.decoder.weight" not in model._state_dict_for_saving(None)


def test_legacy_gamma_beta_names_load(tmp_path):
    from safetensors.torch import load_file, save_file

    reference = save_reference("model", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, report = auto.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys
    with torch.no_grad():
        assert_close(reference(**inputs()).last_hidden_state, ours(**inputs()).last_hidden_state, inputs()["attention_mask"])


def test_heads_without_pooler_ignore_pooler_weights_and_report_other_unused_ones(tmp_path):
    save_reference("pretraining", tmp_path)
    _, report = auto.AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not report.missing_keys
    assert sorted(report.ignored_unexpected_keys) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert sorted(report.unexpected_keys) == ["cls.seq_relationship.bias", "cls.seq_relationship.weight"]


def test_config_round_trip_keeps_transformers_fields(tmp_path):
    transformers.BertConfig(**TINY, classifier_dropout=0.3).save_pretrained(tmp_path)
    config = BertConfig.from_pretrained(tmp_path)
    assert config.classifier_dropout == 0.3 and config.head_dim == 8
    config.save_pretrained(tmp_path / "again")
    back = transformers.BertConfig.from_pretrained(tmp_path / "again")
    assert back.hidden_size == 32 and back.classifier_dropout == 0.3 and back.model_type == "bert"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"add_cross_attention": True}, "add_cross_attention"),
    ],
)
def test_invalid_configs_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        BertConfig.from_dict({**TINY, **overrides})


def test_too_long_input_says_how_to_fix():
    model = BertModel(BertConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="truncat"):
        model(torch.ones(1, TINY["max_position_embeddings"] + 1, dtype=torch.long))


def test_cross_attention_inputs_are_refused_not_ignored():
    model = BertModel(BertConfig(**TINY)).eval()
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="cross-attention"):
        model(ids, encoder_hidden_states=torch.zeros(1, 3, TINY["hidden_size"]))
