"""Tiny random Qwen2-VL checkpoints made by transformers 5.24.0, shared by the Qwen2-VL tests.

``reference_checkpoint`` (built once per session) is a transformers-saved
``Qwen2VLForConditionalGeneration`` (hidden 32, two vision blocks, two decoder
layers) whose weights are all redrawn with a larger spread than
transformers' initialisation, so logits are well separated (greedy choices
are not near-ties) and mistakes cannot hide behind zeros. The folder also
holds the tiny tokenizer, the chat template and processor_config.json written
by :func:`bestiary_qwen2_vl.tiny.build_processor`, with images kept to 4-16
vision tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_qwen2_vl")

from bestiary_qwen2_vl.tiny import build_processor, tiny_config_dict  # noqa: E402


def special_ids(folder: Path) -> dict[str, int]:
    """The tiny tokenizer's special token ids and vocabulary size."""
    from bestiary.processing.tokenization import Tokenizer
    from bestiary_qwen2_vl.tiny import SPECIAL_TOKENS

    tokenizer = Tokenizer.from_pretrained(folder)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS} | {"vocab_size": len(tokenizer)}


def reference_config(folder: Path) -> "transformers.Qwen2VLConfig":
    """transformers' config of the tiny checkpoint (ids from the tokenizer in ``folder``)."""
    return transformers.Qwen2VLConfig(**tiny_config_dict(special_ids(folder)))


def build_reference(folder: Path, seed: int = 0) -> Path:
    """Write processor files and a transformers-saved random model into ``folder``."""
    build_processor(folder)
    torch.manual_seed(seed)
    model = transformers.Qwen2VLForConditionalGeneration(reference_config(folder)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name or "ln_q" in name:
                parameter.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """The shared tiny reference folder (model, tokenizer, processor)."""
    return build_reference(tmp_path_factory.mktemp("qwen2_vl_reference"))


def photo(name: str, size: tuple[int, int] | None = None) -> PIL.Image.Image:
    """A real scikit-image photo (``chelsea``, ``astronaut``, ``coffee``, ``camera``), optionally resized (w, h)."""
    image = PIL.Image.fromarray(getattr(skimage.data, name)())
    return image.resize(size) if size is not None else image


def video(frames: int = 4, height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    """A small (frames, H, W, 3) uint8 clip: a photo panning right, so frames differ."""
    base = np.asarray(photo("astronaut", (width + 8 * frames, height)))
    return np.stack([base[:, 8 * index : 8 * index + width] for index in range(frames)])
