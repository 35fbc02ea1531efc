"""Shared fixtures of the DPR tests: one torch thread, and the real all-MiniLM-L6-v2 folder for its vocabulary."""

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
