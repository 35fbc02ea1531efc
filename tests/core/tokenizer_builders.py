"""Builders of small tokenizer folders (tokenizer.json + tokenizer_config.json) trained with `tokenizers`.

Each builder trains a tiny model on CORPUS in milliseconds and writes a folder
in transformers' format, so both transformers and bestiary can load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece
from tokenizers.trainers import BpeTrainer, WordPieceTrainer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a small corpus for training tiny tokenizers.",
    "Tokenizers split text into tokens, and models read token ids.",
    "Don't panic: it's only a test, isn't it? We've seen worse, they're fine.",
    "Padding, truncation and special tokens must match the reference exactly.",
    "A second sentence is useful when testing pairs of texts for question answering.",
    "Numbers like 12345 and 2024 appear too, as do symbols such as @, # and %.",
    "Chat templates render conversations between a user and an assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "Once upon a time there was a model zoo with many beasts in it.",
]

LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<|python_tag|>", "<|eom_id|>",
]


def _write(folder: Path, backend: Tokenizer, config: dict[str, Any], chat_template: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return folder


def build_byte_level_bpe(folder: Path, *, chat_template: str | None = None, **config: Any) -> Path:
    """A GPT-2 / Llama-3 style byte-level BPE; the post-processor adds <|begin_of_text|> like Llama 3."""
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=600,
        special_tokens=LLAMA3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "model_max_length": 64,
        "clean_up_tokenization_spaces": True,
        **config,
    }
    return _write(folder, backend, settings, chat_template)


def build_wordpiece(folder: Path, *, write_vocab_txt: bool = False, **config: Any) -> Path:
    """A BERT-style WordPiece tokenizer (lower-casing, [CLS] A [SEP] B [SEP] with token types)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.train_from_iterator(
        CORPUS, WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    settings = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": 32,
        "clean_up_tokenization_spaces": True,
        **config,
    }
    _write(folder, backend, settings)
    if write_vocab_txt:
        vocab = backend.get_vocab(with_added_tokens=True)
        lines = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
        (folder / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_vocab_txt_only(folder: Path, **config: Any) -> Path:
    """A legacy BERT folder: vocab.txt and tokenizer_config.json, no tokenizer.json."""
    build_wordpiece(folder, write_vocab_txt=True, **config)
    (folder / "tokenizer.json").unlink()
    return folder


def build_sentencepiece_like(folder: Path, *, chat_template: str | None = None, **config: Any) -> Path:
    """A Llama-2 / Mistral style tokenizer: BPE with byte fallback over Metaspace ("▁") pieces, <s> added first."""
    backend = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.train_from_iterator(
        CORPUS, BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    # Add the 256 byte pieces after the trained vocabulary, and turn byte fallback on.
    state = json.loads(backend.to_str())
    vocab = state["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    state["model"]["byte_fallback"] = True
    backend = Tokenizer.from_str(json.dumps(state))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )
    settings = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 48,
        **config,
    }
    return _write(folder, backend, settings, chat_template)


# ---------------------------------------------------------------- tokenizers shaped like real llama / mistral / qwen2 ones

# Split regexes exactly as Meta-Llama-3's and Qwen2's tokenizer.json spell them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SMOLLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_LEVEL_STYLES = ("llama3", "qwen2", "smollm", "gpt2")


def _byte_level_pre_tokenizer(style: str) -> pre_tokenizers.PreTokenizer:
    if style in ("llama3", "qwen2"):
        split = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if style == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def build_styled_byte_level_bpe(
    folder: Path, style: str, *, chat_template: str | None = None, user_tokens: tuple[str, ...] = (), **config: Any
) -> Path:
    """A byte-level BPE shaped like a real family's tokenizer.json.

    ``style``: "llama3" (Llama-3 split regex, ignore_merges, <|begin_of_text|> added first), "qwen2" (Qwen2
    regex, NFC normalizer, ChatML specials), "smollm" (every digit split off, then GPT-2's regex) or "gpt2".
    ``user_tokens`` are added as plain (not special) tokens, like Qwen2's <tool_call>.
    """
    family_specials = {"llama3": LLAMA3_SPECIALS, "qwen2": QWEN2_SPECIALS, "smollm": SMOLLM_SPECIALS}
    specials = family_specials.get(style, ["<|endoftext|>"])
    backend = Tokenizer(BPE(ignore_merges=style == "llama3"))
    if style == "qwen2":
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _byte_level_pre_tokenizer(style)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS * 3, trainer)
    if user_tokens:
        backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in user_tokens])
    settings: dict[str, Any] = {"model_max_length": 128, **config}
    if style == "llama3":
        bos = backend.token_to_id("<|begin_of_text|>")
        backend.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                    special_tokens=[("<|begin_of_text|>", bos)],
                ),
            ]
        )
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                    "eos_token": "<|eot_id|>", **settings}
    elif style == "qwen2":
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        settings = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                    "bos_token": None, "unk_token": None, **settings}
    else:
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[-2] if style == "smollm"
                    else specials[0], "eos_token": specials[-1], "unk_token": specials[0], **settings}
    return _write(folder, backend, settings, chat_template)


def build_llama2_like(
    folder: Path,
    *,
    legacy: bool = False,
    add_prefix_space: bool = True,
    chat_template: str | None = None,
    extra_specials: tuple[str, ...] = (),
    user_tokens: tuple[str, ...] = (),
    **config: Any,
) -> Path:
    """A Llama-2 / Mistral tokenizer.json as transformers converts a SentencePiece BPE model.

    <unk>, <s>, </s>, then the 256 <0xNN> byte pieces, then pieces (trained here, best first, as
    SentencePiece orders them by score). Merges are every split of a piece into two pieces, ordered by the
    piece's rank and, within a piece, by the ids of its halves (what the converter writes). Spaces become
    "▁" through ``Metaspace(prepend_scheme="first", split=False)``, or with ``legacy=True`` through the
    normalizer Prepend("▁") + Replace(" ", "▁") of Llama-2's own file; ``add_prefix_space=False`` puts no
    "▁" in front. ``extra_specials`` (Mistral's [INST] ...) are special added tokens, ``user_tokens`` plain.
    """
    trainer_backend = Tokenizer(BPE())
    trainer_backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer_backend.train_from_iterator(CORPUS * 3, BpeTrainer(vocab_size=450, show_progress=False))
    trained = json.loads(trainer_backend.to_str())["model"]["vocab"]
    pieces = [piece for piece, _ in sorted(trained.items(), key=lambda item: item[1])]
    for run in ("▁", "▁▁", "▁▁▁", "▁▁▁▁"):  # Llama-2 has pieces for runs of spaces (indentation)
        if run not in pieces:
            pieces.append(run)
    specials = ["<unk>", "<s>", "</s>"]
    vocab_list = specials + [f"<0x{byte:02X}>" for byte in range(256)] + pieces
    vocab = {token: index for index, token in enumerate(vocab_list)}
    piece_set = set(pieces)
    merges = []
    for piece in pieces:
        splits = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))
                  if piece[:cut] in piece_set and piece[cut:] in piece_set]
        merges.extend(sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    state = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(pair) for pair in merges]},
    }
    backend = Tokenizer.from_str(json.dumps(state))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    if legacy:
        prefix = [normalizers.Prepend("▁")] if add_prefix_space else []
        backend.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if add_prefix_space else "never", split=False
        )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    backend.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    if extra_specials:
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in extra_specials])
    if user_tokens:
        backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in user_tokens])
    settings = {
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": legacy, "add_prefix_space": add_prefix_space,
        "model_max_length": 128, **config,
    }
    return _write(folder, backend, settings, chat_template)
