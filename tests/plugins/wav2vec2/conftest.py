"""Session fixtures of the Wav2Vec2 tests; the checkpoint builders live in ``wav2vec2_builders``."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.wav2vec2.wav2vec2_builders import classifier_checkpoint, ctc_checkpoint  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """Run the tiny models on one thread: faster for tensors this small, and steady on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
