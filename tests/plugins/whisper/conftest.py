"""Session fixtures of the Whisper tests; the checkpoint builders live in ``whisper_builders``."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.whisper.whisper_builders import whisper_base, whisper_checkpoint, whisper_ids  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """Run the tiny models on one thread: faster for tensors this small, and steady on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
