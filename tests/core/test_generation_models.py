"""Shared builders of the generation tests: tiny seeded causal LMs and a chat tokenizer.

Models are built directly with bestiary (no transformers import), so the
generation tests stay fast; parity with transformers lives in
tests/plugins/text/test_text_generate_parity.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bestiary_text.configuration_llama import LlamaConfig
from bestiary_text.configuration_mistral import MistralConfig
from bestiary_text.modeling_llama import LlamaForCausalLM
from bestiary_text.modeling_mistral import MistralForCausalLM

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A 2-layer random Llama (vocab 97) in eval mode, identical for the same seed and overrides."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()


def tiny_mistral(seed: int = 0, sliding_window: int = 8, **overrides) -> MistralForCausalLM:
    """A 2-layer random Mistral whose attention window is ``sliding_window`` tokens."""
    torch.manual_seed(seed)
    return MistralForCausalLM(MistralConfig(**{**TINY, "sliding_window": sliding_window, **overrides})).eval()


def perturbed_copy(model: torch.nn.Module, noise: float = 0.003, seed: int = 0, vocab_order: torch.Tensor | None = None):
    """A draft model for assisted decoding: ``model`` with seeded Gaussian noise on every weight.

    Small noise keeps the draft mostly in agreement with the model, so some
    drafted tokens are accepted and some are not. ``vocab_order`` (new id ->
    old id) rebuilds the draft over a reordered vocabulary of that size.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {name: value + noise * torch.randn(value.shape, generator=generator) for name, value in model.state_dict().items()}
    config = model.config
    if vocab_order is not None:
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            state[name] = state[name][vocab_order]
        config = type(config)(**{**config.to_dict(), "vocab_size": vocab_order.shape[0]})
    draft = type(model)(config).eval()
    draft.load_state_dict(state)
    return draft


def prompt(length: int = 8, batch: int = 1, seed: int = 1, low: int = 3, high: int = 97) -> torch.Tensor:
    """Random token ids avoiding the special ids 0-2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (batch, length), generator=generator)


def left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1D prompts of different lengths with left padding; return (ids, mask)."""
    length = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - row.shape[0] :] = row
        mask[i, length - row.shape[0] :] = 1
    return ids, mask


def chat_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (vocab 600) with a Llama-3-like chat template, loaded by bestiary."""
    from bestiary.processing import Tokenizer
    from tests.core import tokenizer_builders as builders

    builders.build_byte_level_bpe(folder, chat_template=CHAT_TEMPLATE, pad_token="<|end_of_text|>")
    return Tokenizer.from_pretrained(folder)


def reordered_tokenizer(source: Path, folder: Path) -> torch.Tensor:
    """Copy the tokenizer in ``source`` to ``folder`` with its ordinary tokens' ids reversed; return new id -> old id.

    Special tokens keep their ids. The copy splits text exactly as the source
    does but numbers the pieces differently: a different tokenizer for
    universal assisted decoding whose drafts can still agree with the model.
    """
    data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    special = {token["id"] for token in data["added_tokens"]}
    vocab = data["model"]["vocab"]
    ordinary = sorted(i for i in vocab.values() if i not in special)
    renumber = dict(zip(ordinary, reversed(ordinary)))
    data["model"]["vocab"] = {token: renumber.get(i, i) for token, i in vocab.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    shutil.copy(source / "tokenizer_config.json", folder / "tokenizer_config.json")
    order = torch.arange(len(vocab))
    for old, new in renumber.items():
        order[new] = old
    return order


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and without contention on a busy machine) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_builders_are_deterministic():
    a, b = tiny_llama(3), tiny_llama(3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(tiny_llama(4).lm_head.weight, a.lm_head.weight)


def test_left_padding_helper():
    ids, mask = left_padded([torch.tensor([5, 6, 7]), torch.tensor([8])], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
