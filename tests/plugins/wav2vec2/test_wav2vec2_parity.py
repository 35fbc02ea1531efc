"""Wav2Vec2 models against transformers on tiny random checkpoints, both directions (fp32, 1e-4)."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.wav2vec2.wav2vec2_builders import HEADS, TINY, VARIANTS, reference_config, save_reference

transformers = pytest.importorskip("transformers")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary_wav2vec2 import modeling_wav2vec2  # noqa: E402

AUTO = {
    "Wav2Vec2Model": ("AutoModel", "last_hidden_state"),
    "Wav2Vec2ForCTC": ("AutoModelForCTC", "logits"),
    "Wav2Vec2ForSequenceClassification": ("AutoModelForAudioClassification", "logits"),
}


def audio_batch():
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(2, 4800, generator=generator)
    mask = torch.ones(2, 4800, dtype=torch.long)
    mask[1, 3000:] = 0
    values[1, 3000:] = 0.0
    return values, mask


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("variant", sorted(VARIANTS) + ["weighted", "adapter"])
def test_every_head_matches_transformers(head, variant, tmp_path):
    overrides = {}
    if variant == "weighted":
        variant, overrides = "layer", dict(use_weighted_layer_sum=True)
    elif variant == "adapter":
        if head == "Wav2Vec2ForSequenceClassification":
            pytest.skip("transformers does not allow adapters with the classification head")
        variant, overrides = "group", dict(add_adapter=True, output_hidden_size=8, num_adapter_layers=1)
    reference = save_reference(tmp_path, head, variant, **overrides)
    auto_name, key = AUTO[head]
    ours = getattr(auto, auto_name).from_pretrained(tmp_path)
    assert type(ours) is getattr(modeling_wav2vec2, head)
    values, mask = audio_batch()
    for attention_mask in (None, mask):
        with torch.no_grad():
            expected = reference(values, attention_mask=attention_mask, output_hidden_states=True)
            got = ours(values, attention_mask=attention_mask, output_hidden_states=True)
        assert_close(expected[key], got[key])
        for a, b in zip(expected.hidden_states, got.hidden_states, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize("head", HEADS)
def test_bestiary_checkpoints_load_in_transformers(head, tmp_path):
    config = auto.AutoConfig.for_model("wav2vec2", **{**TINY, **VARIANTS["layer"]})
    torch.manual_seed(1)
    ours = getattr(modeling_wav2vec2, head).from_config(config).eval()
    ours.save_pretrained(tmp_path)
    reference = getattr(transformers, head).from_pretrained(tmp_path).eval()
    values, mask = audio_batch()
    key = AUTO[head][1]
    with torch.no_grad():
        assert_close(reference(values, attention_mask=mask)[key], ours(values, attention_mask=mask)[key])


def test_old_weight_norm_names_load(tmp_path):
    """Checkpoints saved before torch's parametrized weight norm use weight_g / weight_v."""
    from safetensors.torch import load_file, save_file

    reference = save_reference(tmp_path, "Wav2Vec2Model", "group")
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {
        key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): value
        for key, value in tensors.items()
    }
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, report = modeling_wav2vec2.Wav2Vec2Model.from_pretrained(tmp_path, output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys
    values, _ = audio_batch()
    with torch.no_grad():
        assert_close(reference(values).last_hidden_state, ours(values).last_hidden_state)


def test_ctc_loss_matches_transformers(ctc_checkpoint):
    folder, reference = ctc_checkpoint
    reference.config.ctc_loss_reduction = "mean"
    ours = auto.AutoModelForCTC.from_pretrained(folder, ctc_loss_reduction="mean")
    values, mask = audio_batch()
    labels = torch.tensor([[7, 8, 4, 9, 10], [11, 12, 13, -100, -100]])
    with torch.no_grad():
        expected = reference(values, attention_mask=mask, labels=labels).loss
        got = ours(values, attention_mask=mask, labels=labels).loss
    assert abs(expected.item() - got.item()) <= 1e-4


def test_layer_norm_model_gives_the_same_outputs_alone_and_padded_in_a_batch(ctc_checkpoint):
    folder, _ = ctc_checkpoint
    model = auto.AutoModelForCTC.from_pretrained(folder)
    assert model.config.feat_extract_norm == "layer"
    generator = torch.Generator().manual_seed(5)
    short, long = torch.randn(1, 2400, generator=generator), torch.randn(1, 5200, generator=generator)
    batch = torch.zeros(2, 5200)
    batch[0, :2400], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 5200, dtype=torch.long)
    mask[0, :2400], mask[1] = 1, 1
    with torch.no_grad():
        alone = model(short).logits
        padded = model(batch, attention_mask=mask).logits
    frames = alone.shape[1]
    assert frames == int(model._get_feat_extract_output_lengths(2400))
    assert_close(alone[0], padded[0, :frames])
    with torch.no_grad():
        assert_close(model(long).logits[0], padded[1])


def test_too_short_or_badly_shaped_audio_is_a_clear_error(ctc_checkpoint):
    folder, _ = ctc_checkpoint
    model = auto.AutoModelForCTC.from_pretrained(folder)
    with pytest.raises(ProcessingError, match="at least"):
        model(torch.zeros(1, 10))
    with pytest.raises(ProcessingError, match="batch, samples"):
        model(torch.zeros(2, 2, 4000))


def test_config_round_trips_through_transformers(tmp_path):
    config = auto.AutoConfig.for_model("wav2vec2", **{**TINY, **VARIANTS["layer"]})
    config.save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2Config.from_pretrained(tmp_path)
    assert theirs.inputs_to_logits_ratio == config.inputs_to_logits_ratio == 80
    assert theirs.do_stable_layer_norm and theirs.num_feat_extract_layers == 3
    assert reference_config("layer").to_dict()["conv_stride"] == list(config.conv_stride)
