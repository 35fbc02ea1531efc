"""Session fixtures of the SAM tests; the checkpoint builders live in ``sam_builders``."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.sam.sam_builders import amg_checkpoint, parity_checkpoint, photos  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """Run the tiny SAM models on one thread: faster for tensors this small, and steady on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
