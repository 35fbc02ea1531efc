"""Session fixtures of the Qwen2-VL tests; the checkpoint builders live in ``qwen2_vl_builders``."""

from __future__ import annotations

import pytest
import torch

from tests.plugins.qwen2_vl.qwen2_vl_builders import reference_checkpoint  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """Run the tiny models on one thread: faster for tensors this small, and steady on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def models(reference_checkpoint):
    """(transformers model, bestiary model) loaded from the reference folder."""
    import transformers

    from bestiary_qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

    reference = transformers.Qwen2VLForConditionalGeneration.from_pretrained(reference_checkpoint).eval()
    ours = Qwen2VLForConditionalGeneration.from_pretrained(reference_checkpoint)
    return reference, ours


@pytest.fixture(scope="session")
def processors(reference_checkpoint):
    """(transformers processor, bestiary processor) loaded from the reference folder."""
    import transformers

    from bestiary_qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    return transformers.AutoProcessor.from_pretrained(reference_checkpoint), Qwen2VLProcessor.from_pretrained(
        reference_checkpoint
    )
