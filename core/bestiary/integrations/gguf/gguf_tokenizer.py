"""Building a ``tokenizers.Tokenizer`` from a GGUF file's ``tokenizer.*`` metadata.

    data = tokenizer_from_gguf(GGUFFile("model.gguf"))
    data.tokenizer.encode("Hello").ids
    Tokenizer(tokenizer_object=data.tokenizer, **data.special_tokens, chat_template=data.chat_template)

Two vocabularies are supported, named by ``tokenizer.ggml.model``:

- ``"gpt2"``: byte-level BPE. Tokens and merges are stored spelled in GPT-2's
  byte alphabet; text is split by the regex llama.cpp associates with
  ``tokenizer.ggml.pre`` before BPE.
- ``"llama"``: SentencePiece BPE. Tokens carry scores instead of merges; the
  merges are rebuilt from the scores (the better the merged piece's score, the
  earlier the merge). Spaces become "▁", a "▁" is put before the text, and
  characters outside the vocabulary fall back to ``<0xNN>`` byte tokens.

Tokens typed CONTROL (3) become special added tokens, USER_DEFINED (4) plain
added tokens, so both are matched whole in text.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from bestiary.errors import CheckpointError

__all__ = ["GGUFTokenizerData", "tokenizer_from_gguf", "SUPPORTED_TOKENIZER_MODELS", "PRE_TOKENIZER_SPLITS"]

logger = logging.getLogger(__name__)

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")

TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4

# Special-token roles and the metadata keys holding their ids (llama.cpp spells "seperator").
SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "sep_token": "tokenizer.ggml.seperator_token_id",
    "cls_token": "tokenizer.ggml.cls_token_id",
    "mask_token": "tokenizer.ggml.mask_token_id",
    "eot_token": "tokenizer.ggml.eot_token_id",
    "eom_token": "tokenizer.ggml.eom_token_id",
}
WRAPPER_TOKEN_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")

# Regexes that split text before byte-level BPE, by `tokenizer.ggml.pre`. Letters (\p{L}) and
# numbers (\p{N}) form words; contractions, punctuation runs and newlines get their own pieces.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    "llama-bpe": _LLAMA3,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "smaug-bpe": _LLAMA3,
    "dbrx": _LLAMA3,
    "falcon3": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
}
# Vocabularies trained with every digit on its own, then GPT-2's regex (llama.cpp's "\p{N}" rule).
DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})
# Plain GPT-2 splitting.
GPT2_PRE = frozenset({"default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion"})
# Original tokenizers of these families skip BPE for words that are whole tokens (llama.cpp sets
# ignore_merges for its LLAMA3 type only; "smaug-bpe" and "dbrx" split the same way but merge every word).
IGNORE_MERGES_PRE = frozenset({"llama-bpe", "llama3", "llama-v3", "falcon3"})


@dataclass
class GGUFTokenizerData:
    """What a GGUF file says about its tokenizer, ready for a tokenizer wrapper.

    ``special_tokens`` maps roles (``"bos_token"``, ``"eos_token"``, ``"unk_token"``,
    ``"pad_token"``, ``"eot_token"``, ...) to token strings, ``special_token_ids`` to ids.
    """

    tokenizer: Tokenizer
    model: str
    pre: str | None
    special_tokens: dict[str, str] = field(default_factory=dict)
    special_token_ids: dict[str, int] = field(default_factory=dict)
    add_bos_token: bool = False
    add_eos_token: bool = False
    chat_template: str | None = None
    named_chat_templates: dict[str, str] = field(default_factory=dict)

    def wrapper_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``bestiary.processing.tokenization.Tokenizer``."""
        kwargs: dict[str, Any] = {"tokenizer_object": self.tokenizer}
        kwargs.update({role: token for role, token in self.special_tokens.items() if role in WRAPPER_TOKEN_ROLES})
        if self.named_chat_templates:
            templates = dict(self.named_chat_templates)
            if self.chat_template is not None:
                templates["default"] = self.chat_template
            kwargs["chat_template"] = templates
        elif self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        kwargs["add_bos_token"] = self.add_bos_token
        kwargs["add_eos_token"] = self.add_eos_token
        return kwargs


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Return GPT-2's byte-to-character table: printable bytes stand for themselves, others get 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _respell_byte_level(token: str, alphabet: frozenset[str]) -> str:
    """Spell a token in GPT-2's byte alphabet unless it already is."""
    if set(token) <= alphabet:
        return token
    table = byte_alphabet()
    return "".join(table[byte] for byte in token.encode("utf-8"))


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in PRE_TOKENIZER_SPLITS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre is not None and pre not in GPT2_PRE:
        logger.warning("GGUF tokenizer.ggml.pre %r is not known here; splitting text the GPT-2 way", pre)
    return byte_level


def _byte_level_model(tokens: list[str], merges: list[str], pre: str | None) -> Tokenizer:
    alphabet = frozenset(byte_alphabet().values())
    vocab = {_respell_byte_level(token, alphabet): index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=pre in IGNORE_MERGES_PRE)
    )
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Rebuild SentencePiece BPE merges: every split of a token into two tokens, best score first.

    Ties are broken by longer left piece, then longer right piece, then vocabulary order.
    """
    index = {token: position for position, token in enumerate(tokens)}
    candidates: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores):
        splits = sorted(
            (index[token[:cut]], index[token[cut:]], token[:cut], token[cut:])
            for cut in range(1, len(token))
            if token[:cut] in index and token[cut:] in index
        )
        candidates.extend((score, len(left), len(right), left, right) for _, _, left, right in splits)
    candidates.sort(key=lambda item: item[:3], reverse=True)
    return [(left, right) for *_, left, right in candidates]


def _sentencepiece_model(tokens: list[str], scores: list[float] | None, unk: str | None, add_prefix: bool) -> Tokenizer:
    vocab = {token: position for position, token in enumerate(tokens)}
    merges = merges_from_scores(tokens, scores if scores is not None else [-float(i) for i in range(len(tokens))])
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _special_ids(metadata: Mapping[str, Any], n_tokens: int, source: str) -> dict[str, int]:
    ids = {}
    for role, key in SPECIAL_TOKEN_KEYS.items():
        value = metadata.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or not 0 <= value < n_tokens:
            logger.warning("GGUF %s: %s = %r is not a token id below %d; ignored", source, key, value, n_tokens)
            continue
        ids[role] = value
    return ids


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int], special_ids: dict[str, int], model: str) -> None:
    """Add CONTROL tokens and the role tokens as special, USER_DEFINED ones as plain added tokens."""
    alphabet = frozenset(byte_alphabet().values()) if model == "gpt2" else None
    special_positions = {position for position, kind in enumerate(types) if kind == TOKEN_TYPE_CONTROL}
    special_positions.update(special_ids.values())
    special = []
    for position in sorted(special_positions):
        token = tokens[position]
        if alphabet is not None and not set(token) <= alphabet:
            # A byte-level token spelled outside the byte alphabet is a mislabelled byte sequence.
            continue
        special.append(AddedToken(token, special=True, normalized=False))
    tokenizer.add_special_tokens(special)
    user = [tokens[p] for p, kind in enumerate(types) if kind == TOKEN_TYPE_USER_DEFINED]
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in user])


def _post_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> processors.PostProcessor:
    first = ([f"{bos[0]}:0"] if bos else []) + ["$A:0"] + ([f"{eos[0]}:0"] if eos else [])
    second = ([f"{bos[0]}:1"] if bos else []) + ["$B:1"] + ([f"{eos[0]}:1"] if eos else [])
    specials = [pair for pair in (bos, eos) if pair is not None]
    return processors.TemplateProcessing(
        single=" ".join(first), pair=" ".join(first + second), special_tokens=list(dict.fromkeys(specials))
    )


def _load_metadata(source: Any) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "metadata"
    from .reader import GGUFFile

    if not isinstance(source, GGUFFile):
        source = GGUFFile(os.fspath(source))
    return source.metadata, str(source.path)


def tokenizer_from_gguf(source: Any) -> GGUFTokenizerData:
    """Return the tokenizer described by a GGUF file (a :class:`GGUFFile`, a path, or its metadata dict)."""
    metadata, name = _load_metadata(source)
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model not in SUPPORTED_TOKENIZER_MODELS or not isinstance(tokens, list) or not tokens:
        problem = "has no tokenizer.ggml.tokens" if not tokens else f"has tokenizer.ggml.model {model!r}"
        raise CheckpointError(
            f"GGUF {name} {problem}; bestiary builds tokenizers for tokenizer.ggml.model in "
            f"{list(SUPPORTED_TOKENIZER_MODELS)}. Pass a tokenizer.json folder to load the tokenizer instead."
        )
    types = list(metadata.get("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens))
    special_ids = _special_ids(metadata, len(tokens), name)
    pre = metadata.get("tokenizer.ggml.pre")
    if model == "gpt2":
        merges = metadata.get("tokenizer.ggml.merges")
        if not merges:
            raise CheckpointError(f"GGUF {name}: a gpt2 (byte-level BPE) tokenizer needs tokenizer.ggml.merges.")
        tokenizer = _byte_level_model(tokens, merges, pre)
        default_bos = False
    else:
        unk = tokens[special_ids["unk_token"]] if "unk_token" in special_ids else None
        add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        tokenizer = _sentencepiece_model(tokens, metadata.get("tokenizer.ggml.scores"), unk, add_prefix)
        default_bos = True
    _add_special_tokens(tokenizer, tokens, types, special_ids, model)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    bos = (tokens[special_ids["bos_token"]], special_ids["bos_token"]) if add_bos and "bos_token" in special_ids else None
    eos = (tokens[special_ids["eos_token"]], special_ids["eos_token"]) if add_eos and "eos_token" in special_ids else None
    tokenizer.post_processor = _post_processor(bos, eos)
    prefix = "tokenizer.chat_template."
    return GGUFTokenizerData(
        tokenizer=tokenizer,
        model=model,
        pre=pre,
        special_tokens={role: tokens[position] for role, position in special_ids.items()},
        special_token_ids=special_ids,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        chat_template=metadata.get("tokenizer.chat_template"),
        named_chat_templates={
            key[len(prefix) :]: value for key, value in metadata.items() if key.startswith(prefix) and isinstance(value, str)
        },
    )
