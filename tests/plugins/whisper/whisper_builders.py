"""Tiny random Whisper checkpoints made by transformers 5.24.0, shared by the Whisper and audio pipeline tests.

The tokenizer is a byte-level BPE trained here on a few sentences, followed
by Whisper's special tokens in their real order (end of text, start of
transcript, 99 languages, tasks, ``<|startofprev|>``, ``<|notimestamps|>``)
and the 1501 timestamp tokens. The model is 2 + 2 layers of width 32 with
the real window (1500 encoder positions = 30 s).

A random decoder prefers timestamp tokens (there are five times more of them
than text tokens), which would make plain transcription end in timestamps;
``whisper_checkpoint`` scales their embeddings down so that the text rules
the output unless timestamps are asked for. Its generation config is the
shape of a real multilingual checkpoint's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("bestiary_whisper")

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from bestiary_whisper.languages import LANGUAGES  # noqa: E402

LANGUAGE_CODES = list(LANGUAGES)[:99]  # the 99 languages of Whisper v1/v2
SPECIAL_TOKENS = (
    ["<|endoftext|>", "<|startoftranscript|>"]
    + [f"<|{code}|>" for code in LANGUAGE_CODES]
    + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
)
CORPUS = [
    "hello world this is a tiny speech corpus for whisper",
    "the quick brown fox jumps over the lazy dog",
    "bonjour tout le monde, guten tag, buenos dias",
]
TINY = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=64,
)


def build_tokenizer(folder: Path) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json of a tiny Whisper vocabulary; return the special ids."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS * 4, trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "model_max_length": 448,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    ids["vocab_size"] = backend.get_vocab_size()
    ids["timestamp_begin"] = backend.token_to_id("<|0.00|>")
    return ids


def reference_config(ids: dict[str, int], **overrides) -> "transformers.WhisperConfig":
    """A tiny transformers WhisperConfig for the vocabulary ``ids``."""
    eot = ids["<|endoftext|>"]
    settings = dict(
        TINY,
        vocab_size=ids["vocab_size"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        begin_suppress_tokens=[220, eot],
        suppress_tokens=[1, 2, 7],
    )
    settings.update(overrides)
    return transformers.WhisperConfig(**settings)


def generation_config(ids: dict[str, int], config) -> "transformers.GenerationConfig":
    """The generation settings of a real multilingual checkpoint, for this vocabulary."""
    eot = ids["<|endoftext|>"]
    settings = transformers.GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        begin_suppress_tokens=list(config.begin_suppress_tokens),
        suppress_tokens=list(config.suppress_tokens),
    )
    settings.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGE_CODES}
    settings.task_to_id = {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]}
    settings.no_timestamps_token_id = ids["<|notimestamps|>"]
    settings.prev_sot_token_id = ids["<|startofprev|>"]
    settings.is_multilingual = True
    settings.max_initial_timestamp_index = 50
    settings.max_length = config.max_target_positions
    settings.return_timestamps = False
    return settings


def save_reference(folder: Path, ids: dict[str, int], head: str = "WhisperForConditionalGeneration", **overrides):
    """Build, save (model, generation config, tokenizer, feature extractor) and return a transformers model."""
    config = reference_config(ids, **overrides)
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    if hasattr(model, "proj_out"):
        with torch.no_grad():
            model.model.decoder.embed_tokens.weight[ids["timestamp_begin"] :] *= 0.05
        model.generation_config = generation_config(ids, config)
    model.save_pretrained(folder)
    tokenizer = transformers.WhisperTokenizer.from_pretrained(folder.parent / "tokenizer")
    processor = transformers.WhisperProcessor(feature_extractor=transformers.WhisperFeatureExtractor(), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def whisper_base(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """(root folder holding the tiny tokenizer, its special-token ids); checkpoints are saved under the root."""
    root = tmp_path_factory.mktemp("whisper")
    return root, build_tokenizer(root / "tokenizer")


@pytest.fixture(scope="session")
def whisper_ids(whisper_base) -> dict[str, int]:
    """Ids of the special tokens of the tiny vocabulary."""
    return whisper_base[1]


@pytest.fixture(scope="session")
def whisper_checkpoint(whisper_base):
    """(folder, transformers model) of a tiny speech-recognition checkpoint with processor files."""
    root, ids = whisper_base
    folder = root / "asr"
    reference = save_reference(folder, ids)
    return folder, reference
