"""Shared fixtures of the BERT tests: the real all-MiniLM-L6-v2 folder, loaded once per session."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.fixtures_paths import require_minilm_folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these small-input tests on one thread (restored afterwards): on a busy or xdist-shared machine,
    several OpenMP threads per process make tiny matmuls many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def minilm_path():
    """The all-MiniLM-L6-v2 folder (the test is skipped with the pip command when it is absent)."""
    return require_minilm_folder()


@pytest.fixture(scope="session")
def minilm_ours(minilm_path):
    """(model, tokenizer) loaded by bestiary's Auto classes."""
    import bestiary.auto as auto

    return auto.AutoModel.from_pretrained(minilm_path), auto.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def minilm_reference(minilm_path):
    """(model, tokenizer) loaded by transformers."""
    import transformers

    model = transformers.AutoModel.from_pretrained(minilm_path).eval()
    return model, transformers.AutoTokenizer.from_pretrained(minilm_path)
