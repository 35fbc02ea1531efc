"""Llama, Mistral and Qwen2: bestiary against transformers on tiny random checkpoints, both directions."""

from __future__ import annotations

import pytest
import torch
import transformers

import bestiary.auto as auto

TINY = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    vocab_size=113,
    max_position_embeddings=256,
    pad_token_id=0,
)
FAMILIES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
}
HEADS = {
    "model": ("AutoModel", "last_hidden_state"),
    "causal-lm": ("AutoModelForCausalLM", "logits"),
    "sequence-classification": ("AutoModelForSequenceClassification", "logits"),
    "token-classification": ("AutoModelForTokenClassification", "logits"),
    "question-answering": ("AutoModelForQuestionAnswering", "start_logits"),
}
ROPE_VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


def make_config(family: str, **overrides):
    return FAMILIES[family](**{**TINY, **overrides})


def save_reference(config, head: str, folder) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(transformers, HEADS[head][0]).from_config(config).eval()
    model.save_pretrained(folder)
    return model


def inputs(batch: int = 2, length: int = 11, left_pad: int = 3):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1 and left_pad:
        mask[1, :left_pad] = 0
        ids[1, :left_pad] = TINY["pad_token_id"]
    return ids, mask


def assert_close(reference: torch.Tensor, ours: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    assert reference.shape == ours.shape
    if mask is not None and reference.dim() >= 2 and reference.shape[:2] == mask.shape:
        reference, ours = reference[mask.bool()], ours[mask.bool()]
    assert (reference - ours).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_matches_transformers(family, head, tmp_path):
    config = make_config(family, num_labels=3)
    reference = save_reference(config, head, tmp_path)
    ours = getattr(auto, HEADS[head][0]).from_pretrained(tmp_path)
    assert type(ours).__name__ == type(reference).__name__
    ids, mask = inputs()
    field = HEADS[head][1]
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask)
        got = ours(input_ids=ids, attention_mask=mask)
    assert_close(getattr(expected, field), getattr(got, field), mask)
    if head == "question-answering":
        assert_close(expected.end_logits, got.end_logits, mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hidden_states_and_attentions_match(family, tmp_path):
    reference = save_reference(make_config(family), "causal-lm", tmp_path)
    reference.set_attn_implementation("eager")
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = inputs()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        got = ours(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(expected.hidden_states) == len(got.hidden_states) == TINY["num_hidden_layers"] + 1
    for a, b in zip(expected.hidden_states, got.hidden_states):
        assert_close(a, b, mask)
    for a, b in zip(expected.attentions, got.attentions):
        assert_close(a[0], b[0])  # row 0 has no padding: every weight is meaningful


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_scaling_variants_match(variant, tmp_path):
    config = make_config("llama", rope_parameters={"rope_theta": 5000.0, **(ROPE_VARIANTS[variant] or {"rope_type": "default"})})
    reference = save_reference(config, "causal-lm", tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    # long enough that dynamic scaling goes past max_position_embeddings would be slow; positions up to 300 are enough
    ids = torch.randint(1, TINY["vocab_size"], (1, 40))
    position_ids = torch.arange(260, 300)[None]
    with torch.no_grad():
        expected = reference(ids, position_ids=position_ids).logits
        got = ours(ids, position_ids=position_ids).logits
    assert_close(expected, got)


def test_legacy_rope_scaling_keys_are_read(tmp_path):
    """Old checkpoints spell rope settings as rope_theta + rope_scaling with "type"."""
    config = make_config("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    reference = save_reference(config, "causal-lm", tmp_path)
    import json

    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data.pop("rope_parameters")
    data.update(rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0})
    path.write_text(json.dumps(data))
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, _ = inputs(batch=1)
    with torch.no_grad():
        assert_close(reference(ids).logits, ours(ids).logits)


def test_mistral_sliding_window_masks_old_tokens(tmp_path):
    config = make_config("mistral", sliding_window=4)
    reference = save_reference(config, "causal-lm", tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = inputs(length=13)
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits, mask)


def test_qwen2_sliding_layers_match(tmp_path):
    config = make_config("qwen2", use_sliding_window=True, sliding_window=3, max_window_layers=1)
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    reference = save_reference(config, "causal-lm", tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ours.config.layer_types == config.layer_types
    ids, mask = inputs(length=12)
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings(tied, tmp_path):
    reference = save_reference(make_config("llama", tie_word_embeddings=tied), "causal-lm", tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    ids, _ = inputs(batch=1)
    with torch.no_grad():
        assert_close(reference(ids).logits, ours(ids).logits)


def test_incremental_decoding_with_cache_matches_full_forward(tmp_path):
    save_reference(make_config("qwen2"), "causal-lm", tmp_path)
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, mask = inputs(length=10)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        first = ours(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        cache = first.past_key_values
        steps = [first.logits]
        for t in range(7, 10):
            out = ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, use_cache=True,
                       position_ids=(mask[:, : t + 1].cumsum(-1) - 1)[:, -1:])
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    # the full forward uses plain positions; compare the unpadded row where positions agree
    assert_close(full[0], incremental[0])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("head", ["causal-lm", "sequence-classification"])
def test_bestiary_saved_checkpoints_load_in_transformers(family, head, tmp_path):
    torch.manual_seed(3)
    config = auto.AutoConfig.for_model(family, **{**TINY, "num_labels": 4})
    ours = getattr(auto, HEADS[head][0]).from_config(config).eval()
    ours.save_pretrained(tmp_path)
    reference = getattr(transformers, HEADS[head][0]).from_pretrained(tmp_path).eval()
    assert type(reference).__name__ == type(ours).__name__
    ids, mask = inputs()
    with torch.no_grad():
        assert_close(getattr(reference(ids, attention_mask=mask), "logits"), ours(ids, attention_mask=mask).logits, mask)


def test_sharded_save_round_trips_through_transformers(tmp_path):
    torch.manual_seed(4)
    ours = auto.AutoModelForCausalLM.from_config(auto.AutoConfig.for_model("llama", **TINY)).eval()
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    again = auto.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids, _ = inputs(batch=1)
    with torch.no_grad():
        assert_close(reference(ids).logits, ours(ids).logits)
        assert_close(again(ids).logits, ours(ids).logits)


def test_transformers_sharded_checkpoint_loads(tmp_path):
    reference = save_reference(make_config("mistral"), "causal-lm", tmp_path / "src")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    ours = auto.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    ids, _ = inputs(batch=1)
    with torch.no_grad():
        assert_close(reference(ids).logits, ours(ids).logits)


def test_base_model_loads_from_causal_lm_checkpoint_and_reverse(tmp_path):
    reference = save_reference(make_config("llama"), "causal-lm", tmp_path / "lm")
    base, report = auto.AutoModel.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert report.missing_keys == [] and report.unexpected_keys == ["lm_head.weight"]
    ids, _ = inputs(batch=1)
    with torch.no_grad():
        expected = reference.model(ids).last_hidden_state
        assert_close(expected, base(ids).last_hidden_state)
    base.save_pretrained(tmp_path / "base")
    lm, report = auto.AutoModelForCausalLM.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert report.missing_keys == ["lm_head.weight"]
    with torch.no_grad():
        assert_close(expected, lm.model(ids).last_hidden_state)


def test_bf16_load_and_default_dtype_follows_checkpoint(tmp_path):
    reference = save_reference(make_config("llama"), "causal-lm", tmp_path / "fp32")
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert auto.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    as_fp32 = auto.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    assert as_fp32.dtype == torch.float32
    assert auto.AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype="bfloat16").dtype == torch.bfloat16
