"""Whisper models against transformers on tiny random checkpoints, both directions (fp32, 1e-4)."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.whisper.whisper_builders import save_reference

transformers = pytest.importorskip("transformers")

import bestiary.auto as auto  # noqa: E402
from bestiary.errors import ProcessingError  # noqa: E402
from bestiary_whisper.modeling_whisper import (  # noqa: E402
    WhisperForAudioClassification,
    WhisperForConditionalGeneration,
    WhisperModel,
)

HEADS = {
    "WhisperModel": ("AutoModel", WhisperModel, "last_hidden_state"),
    "WhisperForConditionalGeneration": ("AutoModelForSpeechSeq2Seq", WhisperForConditionalGeneration, "logits"),
    "WhisperForAudioClassification": ("AutoModelForAudioClassification", WhisperForAudioClassification, "logits"),
}


def inputs(ids, batch: int = 2):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(batch, 80, 3000, generator=generator)
    decoder = torch.randint(0, 300, (batch, 6), generator=generator)
    decoder[:, 0] = ids["<|startoftranscript|>"]
    return features, decoder


def run(model, head, features, decoder, **kwargs):
    with torch.no_grad():
        if head == "WhisperForAudioClassification":
            return model(input_features=features, output_hidden_states=True, **kwargs)
        return model(input_features=features, decoder_input_ids=decoder, output_hidden_states=True, **kwargs)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("weighted", [False, True], ids=["last-layer", "weighted-layer-sum"])
def test_every_head_matches_transformers(head, weighted, whisper_base, tmp_path):
    if weighted and head != "WhisperForAudioClassification":
        pytest.skip("use_weighted_layer_sum only changes the classification head")
    root, ids = whisper_base
    folder = tmp_path / head
    folder.parent.joinpath("tokenizer").symlink_to(root / "tokenizer")
    reference = save_reference(folder, ids, head=head, num_labels=3, use_weighted_layer_sum=weighted)
    auto_name, cls, key = HEADS[head]
    ours = getattr(auto, auto_name).from_pretrained(folder)
    assert type(ours) is cls
    features, decoder = inputs(ids)
    expected, got = run(reference, head, features, decoder), run(ours, head, features, decoder)
    assert_close(expected[key], got[key])
    if head != "WhisperForAudioClassification":
        assert_close(expected.encoder_last_hidden_state, got.encoder_last_hidden_state)
        for a, b in zip(expected.decoder_hidden_states, got.decoder_hidden_states, strict=True):
            assert_close(a, b)
    for a, b in zip(expected.encoder_hidden_states if head != "WhisperForAudioClassification" else expected.hidden_states,
                    got.encoder_hidden_states if head != "WhisperForAudioClassification" else got.hidden_states, strict=True):
        assert_close(a, b)


def test_padded_decoder_inputs_and_cached_steps_match_transformers(whisper_checkpoint, whisper_ids):
    folder, reference = whisper_checkpoint
    ours = WhisperForConditionalGeneration.from_pretrained(folder)
    features, decoder = inputs(whisper_ids)
    mask = torch.ones_like(decoder)
    mask[1, :2] = 0
    with torch.no_grad():
        expected = reference(features, decoder_input_ids=decoder, decoder_attention_mask=mask).logits
        got = ours(features, decoder_input_ids=decoder, decoder_attention_mask=mask).logits
        assert_close(expected[:, 2:], got[:, 2:])
        # the cache gives the same logits one token at a time as all at once
        full = ours(features, decoder_input_ids=decoder, use_cache=False).logits
        first = ours(features, decoder_input_ids=decoder[:, :4], use_cache=True)
        step = ours(
            encoder_outputs=(first.encoder_last_hidden_state,),
            decoder_input_ids=decoder[:, 4:],
            past_key_values=first.past_key_values,
        ).logits
    assert_close(full[:, 4:], step)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_bestiary_checkpoints_load_in_transformers(head, whisper_ids, tmp_path):
    _, cls, key = HEADS[head]
    config = auto.AutoConfig.for_model(
        "whisper",
        **{**reference_settings(whisper_ids), "num_labels": 3},
    )
    torch.manual_seed(1)
    ours = cls.from_config(config).eval()
    ours.save_pretrained(tmp_path)
    reference = getattr(transformers, head).from_pretrained(tmp_path).eval()
    features, decoder = inputs(whisper_ids)
    assert_close(run(ours, head, features, decoder)[key], run(reference, head, features, decoder)[key])


def reference_settings(ids):
    from tests.plugins.whisper.whisper_builders import reference_config

    data = reference_config(ids).to_dict()
    return {k: v for k, v in data.items() if k not in ("architectures", "transformers_version", "model_type")}


def test_encoder_rejects_features_of_the_wrong_length(whisper_checkpoint):
    folder, _ = whisper_checkpoint
    model = WhisperModel.from_pretrained(folder)
    with pytest.raises(ProcessingError, match="3000"):
        model.encoder(torch.zeros(1, 80, 2000))


def test_labels_give_the_same_loss_as_transformers(whisper_checkpoint, whisper_ids):
    folder, reference = whisper_checkpoint
    ours = WhisperForConditionalGeneration.from_pretrained(folder)
    features, labels = inputs(whisper_ids)
    labels[0, -2:] = -100
    with torch.no_grad():
        expected = reference(features, labels=labels).loss
        got = ours(features, labels=labels).loss
    assert abs(expected.item() - got.item()) <= 1e-4
