"""Tiny random Wav2Vec2 checkpoints made by transformers 5.24.0, shared by the Wav2Vec2 and audio pipeline tests.

The vocabulary is the one of the English CTC checkpoints (``<pad>`` = blank,
``<s>``, ``</s>``, ``<unk>``, ``|`` between words, capital letters and the
apostrophe). Two model variants:

- ``"group"``: group-norm feature encoder, post-norm transformer (the base
  models), no attention mask in the feature extractor;
- ``"layer"``: layer-norm feature encoder, pre-norm transformer
  (``do_stable_layer_norm``, the large "lv60" models), with attention masks.

Convolutions stride 5 x 4 x 4: one frame per 80 samples (5 ms at 16 kHz).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_wav2vec2")

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "'": 5}
VOCAB.update({letter: 6 + i for i, letter in enumerate(string.ascii_uppercase)})
TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    conv_dim=[16, 16, 16],
    conv_kernel=[10, 8, 4],
    conv_stride=[5, 4, 4],
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    vocab_size=len(VOCAB),
    num_labels=3,
    classifier_proj_size=8,
)
VARIANTS = {
    "group": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    "layer": dict(feat_extract_norm="layer", do_stable_layer_norm=True),
}
HEADS = ("Wav2Vec2Model", "Wav2Vec2ForCTC", "Wav2Vec2ForSequenceClassification")


def reference_config(variant: str = "group", **overrides) -> "transformers.Wav2Vec2Config":
    """A tiny transformers Wav2Vec2Config of one variant."""
    return transformers.Wav2Vec2Config(**{**TINY, **VARIANTS[variant], **overrides})


def save_processor(folder: Path, variant: str) -> None:
    """Write transformers' tokenizer and feature extractor files for ``variant`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(vocab_file), do_lower_case=False)
    extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=variant == "layer", do_normalize=True)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)


def save_reference(folder: Path, head: str = "Wav2Vec2ForCTC", variant: str = "group", **overrides):
    """Build, save (with processor files) and return a transformers model."""
    torch.manual_seed(0)
    model = getattr(transformers, head)(reference_config(variant, **overrides)).eval()
    model.save_pretrained(folder)
    save_processor(folder, variant)
    return model


@pytest.fixture(scope="session")
def ctc_checkpoint(tmp_path_factory):
    """(folder, transformers model) of a tiny layer-norm CTC checkpoint with processor files."""
    folder = tmp_path_factory.mktemp("wav2vec2") / "ctc"
    return folder, save_reference(folder, "Wav2Vec2ForCTC", "layer")


@pytest.fixture(scope="session")
def classifier_checkpoint(tmp_path_factory):
    """(folder, transformers model) of a tiny group-norm audio classifier with labels."""
    folder = tmp_path_factory.mktemp("wav2vec2") / "classifier"
    labels = {0: "speech", 1: "music", 2: "noise"}
    model = save_reference(folder, "Wav2Vec2ForSequenceClassification", "group", id2label=labels)
    return folder, model
