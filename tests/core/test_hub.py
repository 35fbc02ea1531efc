"""The hub code path (huggingface_hub) against a pre-filled cache, offline."""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from bestiary.auto import AutoConfig, AutoModelForCausalLM
from bestiary.errors import HubError
from bestiary.hub import HubOptions, resolve_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache_dir, repo_id: str, folder, revision_name: str = "main"):
    """Lay ``folder``'s files out as huggingface_hub's cache does for ``repo_id`` at one commit."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / revision_name).write_text(COMMIT)
    return snapshot


@pytest.fixture
def cached_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path / "src")
    cache = tmp_path / "cache"
    fill_cache(cache, "acme/tiny-llama", tmp_path / "src")
    return cache, reference


def test_repo_id_loads_from_the_cache_offline(cached_repo):
    cache, reference = cached_repo
    model = AutoModelForCausalLM.from_pretrained("acme/tiny-llama", cache_dir=cache)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert AutoConfig.from_pretrained("acme/tiny-llama", cache_dir=cache, revision=COMMIT).hidden_size == 32


def test_offline_missing_file_says_why(cached_repo):
    cache, _ = cached_repo
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        resolve_file("acme/not-cached", "config.json", HubOptions(cache_dir=cache))
    assert resolve_file("acme/tiny-llama", "tokenizer.json", HubOptions(cache_dir=cache), required=False) is None


def test_local_files_only_and_bad_repo_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HubError, match="local_files_only"):
        resolve_file("acme/absent", "config.json", HubOptions(cache_dir=tmp_path, local_files_only=True))
    with pytest.raises(HubError, match="neither an existing local folder nor a valid hub repo id"):
        resolve_file("no/such/../path//x", "config.json", HubOptions(cache_dir=tmp_path))
