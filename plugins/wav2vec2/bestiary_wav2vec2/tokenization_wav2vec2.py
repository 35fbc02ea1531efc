"""``Wav2Vec2CTCTokenizer``: characters in, characters out, with CTC's greedy decoding rules.

The vocabulary (``vocab.json``) maps single characters, a word delimiter
(``|``, standing for a space) and a few special tokens (``<pad>``, which is
also CTC's blank, ``<s>``, ``</s>``, ``<unk>``) to ids. Decoding the argmax of
a CTC head collapses repeated ids, drops blanks, turns delimiters into
spaces, and can report the frame span of every character and word.

Files are transformers' own (``vocab.json``, ``tokenizer_config.json``,
``special_tokens_map.json``), read and written both ways.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from bestiary.errors import HubError, ProcessingError
from bestiary.hub import HubOptions, resolve_file
from bestiary.outputs import ModelOutput
from bestiary.processing.base import atomic_write_text
from bestiary.processing.tokenization import BatchEncoding, _to_python, clean_up_tokenization

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
_NAMED = ("bos_token", "eos_token", "unk_token", "pad_token")
_NOT_SAVED = {"name_or_path", "tokenizer_class", "added_tokens_decoder", "vocab_file", "tokenizer_file", "is_local",
              "local_files_only", "extra_special_tokens", "additional_special_tokens", "backend"}


@dataclass
class Wav2Vec2CTCTokenizerOutput(ModelOutput):
    """Decoded text with, on request, the frame span of each character and word.

    Offsets are ``{"char": c, "start_offset": s, "end_offset": e}`` and
    ``{"word": w, "start_offset": s, "end_offset": e}``, in output frames
    (multiply by ``config.inputs_to_logits_ratio / sampling_rate`` for seconds).
    """

    text: Any = None
    char_offsets: Any = None
    word_offsets: Any = None


def _token_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get("content")
    return str(getattr(value, "content", value))


class Wav2Vec2CTCTokenizer:
    """Character-level tokenizer of Wav2Vec2 CTC checkpoints, with greedy CTC decoding.

    ``do_lower_case`` means the vocabulary is upper case: text is upper-cased
    when encoded and lower-cased when decoded (transformers' convention).
    """

    transformers_names = ("Wav2Vec2CTCTokenizer",)
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab: Mapping[str, Any],
        *,
        bos_token: Any = "<s>",
        eos_token: Any = "</s>",
        unk_token: Any = "<unk>",
        pad_token: Any = "<pad>",
        word_delimiter_token: Any = "|",
        replace_word_delimiter_char: str = " ",
        do_lower_case: bool = False,
        target_lang: str | None = None,
        additional_special_tokens: Sequence[Any] | None = None,
        padding_side: str = "right",
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
        **config: Any,
    ) -> None:
        if not isinstance(vocab, Mapping) or not vocab:
            raise ProcessingError("Wav2Vec2CTCTokenizer needs a non-empty vocabulary (token -> id mapping).")
        self.vocab = dict(vocab)
        self.target_lang = target_lang
        self.encoder = self._select_vocab(target_lang)
        self.decoder = {index: token for token, index in self.encoder.items()}
        self._named = {
            "bos_token": _token_text(bos_token),
            "eos_token": _token_text(eos_token),
            "unk_token": _token_text(unk_token),
            "pad_token": _token_text(pad_token),
        }
        self.word_delimiter_token = _token_text(word_delimiter_token)
        self.replace_word_delimiter_char = replace_word_delimiter_char
        self.do_lower_case = bool(do_lower_case)
        self.additional_special_tokens = [_token_text(t) for t in additional_special_tokens or []]
        if padding_side not in ("right", "left"):
            raise ProcessingError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        self.padding_side = padding_side
        self.model_max_length = int(model_max_length) if model_max_length is not None else int(1e30)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.name_or_path = str(name_or_path)
        self._config = {key: value for key, value in config.items() if key not in _NOT_SAVED}
        for name, token in {**self._named, "word_delimiter_token": self.word_delimiter_token}.items():
            if token is not None and token not in self.encoder:
                logger.warning("The %s %r is not in the vocabulary; it will encode as the unknown token.", name, token)
        self._build_splitter()

    def _select_vocab(self, target_lang: str | None) -> dict[str, int]:
        nested = all(isinstance(value, Mapping) for value in self.vocab.values())
        if target_lang is None:
            if nested:
                raise ProcessingError(
                    f"This vocabulary is per language ({', '.join(sorted(self.vocab)[:5])}, ...); pass target_lang=."
                )
            return {str(token): int(index) for token, index in self.vocab.items()}
        if not nested or target_lang not in self.vocab:
            raise ProcessingError(
                f"target_lang={target_lang!r} is not one of this vocabulary's languages "
                f"({', '.join(sorted(self.vocab)[:10]) if nested else 'it is not per language'})."
            )
        return {str(token): int(index) for token, index in self.vocab[target_lang].items()}

    def set_target_lang(self, target_lang: str) -> None:
        """Switch a per-language vocabulary (MMS checkpoints) to ``target_lang``."""
        self.encoder = self._select_vocab(target_lang)
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.target_lang = target_lang
        self._build_splitter()

    def _build_splitter(self) -> None:
        multi = sorted((token for token in self.encoder if len(token) > 1), key=len, reverse=True)
        self._splitter = re.compile("(" + "|".join(r"\s*" + re.escape(t) + r"\s*" for t in multi) + ")") if multi else None

    # -- vocabulary --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of tokens in the (selected) vocabulary."""
        return len(self.decoder)

    def __len__(self) -> int:
        return len(self.decoder)

    def get_vocab(self) -> dict[str, int]:
        """The token-to-id mapping."""
        return dict(self.encoder)

    def __getattr__(self, name: str) -> Any:
        named = self.__dict__.get("_named")
        if named is not None:
            if name in named:
                return named[name]
            if name.endswith("_id") and name[:-3] in named:
                token = named[name[:-3]]
                return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def word_delimiter_token_id(self) -> int | None:
        """Id of the word delimiter."""
        return None if self.word_delimiter_token is None else self.convert_tokens_to_ids(self.word_delimiter_token)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """Named special tokens that are set."""
        found: dict[str, Any] = {name: token for name, token in self._named.items() if token is not None}
        if self.additional_special_tokens:
            found["additional_special_tokens"] = list(self.additional_special_tokens)
        return found

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token (named ones first)."""
        tokens = [token for token in self._named.values() if token is not None] + self.additional_special_tokens
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of :attr:`all_special_tokens`."""
        return [self.convert_tokens_to_ids(token) for token in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        """Id of a token (the unknown token's id when absent), or ids of a list of tokens."""
        if isinstance(tokens, str):
            if tokens in self.encoder:
                return self.encoder[tokens]
            unk = self._named["unk_token"]
            return self.encoder.get(unk) if unk is not None else None
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any:
        """Token of an id (the unknown token for unknown ids), or tokens of a list of ids."""
        ids = _to_python(ids)
        unk = self._named["unk_token"]
        if isinstance(ids, int):
            return self.decoder.get(ids, unk)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.decoder.get(int(i), unk) for i in ids if int(i) not in skipped]

    # -- encoding ----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Split text into vocabulary tokens: multi-character tokens whole, everything else by character."""
        if self.do_lower_case:
            text = text.upper()
        pieces = self._splitter.split(text) if self._splitter is not None else [text]
        tokens: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            stripped = piece.strip()
            if self._splitter is not None and stripped in self.encoder and len(stripped) > 1:
                tokens.append(stripped)
                continue
            delimiter = self.word_delimiter_token or " "
            tokens.extend(piece.replace(" ", delimiter))
        return tokens

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        """Token ids of one text."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool = False,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode a text or a batch of texts (typically CTC labels); pad with ``padding=True``."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(item, str) for item in texts):
            raise ProcessingError("Wav2Vec2CTCTokenizer takes a string or a list of strings.")
        rows = [self.encode(item) for item in texts]
        if truncation and max_length is not None:
            rows = [row[:max_length] for row in rows]
        masks = [[1] * len(row) for row in rows]
        if padding and padding != "do_not_pad":
            target = max_length if padding == "max_length" and max_length else max(len(row) for row in rows)
            pad_id = self.pad_token_id if self.pad_token_id is not None else 0
            for row, mask in zip(rows, masks):
                extra = [pad_id] * (target - len(row))
                zeros = [0] * (target - len(row))
                if self.padding_side == "right":
                    row.extend(extra)
                    mask.extend(zeros)
                else:
                    row[:0] = extra
                    mask[:0] = zeros
        data: dict[str, Any] = {"input_ids": rows[0] if single else rows}
        if return_attention_mask:
            data["attention_mask"] = masks[0] if single else masks
        return BatchEncoding(data, tensor_type=return_tensors)

    # -- decoding ----------------------------------------------------------------------------
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        group_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
        output_char_offsets: bool = False,
        output_word_offsets: bool = False,
    ) -> Any:
        """Greedy CTC decoding of one id sequence (a batch gives a list).

        Repeated ids collapse into one (``group_tokens``), the pad (blank)
        token is dropped, the word delimiter becomes a space. With
        ``output_char_offsets`` / ``output_word_offsets`` returns a
        :class:`Wav2Vec2CTCTokenizerOutput` whose offsets count frames.
        ``skip_special_tokens`` drops special tokens before grouping (so a
        blank no longer separates two equal characters); CTC outputs should
        be decoded without it.
        """
        ids = _to_python(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            return [
                self.decode(row, skip_special_tokens, clean_up_tokenization_spaces, group_tokens,
                            spaces_between_special_tokens, output_char_offsets, output_word_offsets)
                for row in ids
            ]
        tokens = self.convert_ids_to_tokens([int(i) for i in ids])
        if skip_special_tokens:
            special = set(self.all_special_tokens) - {self.word_delimiter_token}
            tokens = [token for token in tokens if token not in special]
        result = self._tokens_to_text(tokens, group_tokens, spaces_between_special_tokens,
                                      output_char_offsets, output_word_offsets)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        text = clean_up_tokenization(result["text"]) if clean else result["text"]
        if output_char_offsets or output_word_offsets:
            return Wav2Vec2CTCTokenizerOutput(
                text=text, char_offsets=result["char_offsets"], word_offsets=result["word_offsets"]
            )
        return text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> Any:
        """Decode each sequence of a batch; with offsets, one output holding lists."""
        rows = _to_python(sequences)
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        decoded = [self.decode(row, skip_special_tokens, **kwargs) for row in rows]
        if kwargs.get("output_char_offsets") or kwargs.get("output_word_offsets"):
            return Wav2Vec2CTCTokenizerOutput(
                text=[d.text for d in decoded],
                char_offsets=[d.char_offsets for d in decoded],
                word_offsets=[d.word_offsets for d in decoded],
            )
        return decoded

    def _tokens_to_text(
        self,
        tokens: list[str],
        group_tokens: bool,
        spaces_between_special_tokens: bool,
        output_char_offsets: bool,
        output_word_offsets: bool,
    ) -> dict[str, Any]:
        if not tokens:
            return {"text": "", "char_offsets": [] if output_char_offsets else None,
                    "word_offsets": [] if output_word_offsets else None}
        if group_tokens:
            runs = [(token, len(list(run))) for token, run in groupby(tokens)]
        else:
            runs = [(token, 1) for token in tokens]
        blank = self._named["pad_token"]
        chars: list[dict[str, Any]] = []
        frame = 0
        for token, count in runs:
            if token != blank:
                char = self.replace_word_delimiter_char if token == self.word_delimiter_token else token
                chars.append({"char": char, "start_offset": frame, "end_offset": frame + count})
            frame += count
        text = (" " if spaces_between_special_tokens else "").join(item["char"] for item in chars).strip()
        if self.do_lower_case:
            text = text.lower()
        words = self.word_offsets(chars, self.replace_word_delimiter_char) if output_word_offsets else None
        return {"text": text, "char_offsets": chars if output_char_offsets else None, "word_offsets": words}

    @staticmethod
    def word_offsets(char_offsets: list[dict[str, Any]], delimiter: str = " ") -> list[dict[str, Any]]:
        """Group character offsets into words separated by ``delimiter``."""
        words: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for item in char_offsets:
            if item["char"] == delimiter:
                if current is not None:
                    words.append(current)
                    current = None
                continue
            if current is None:
                current = {"word": item["char"], "start_offset": item["start_offset"], "end_offset": item["end_offset"]}
            else:
                current["word"] += item["char"]
                current["end_offset"] = item["end_offset"]
        if current is not None:
            words.append(current)
        return words

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "Wav2Vec2CTCTokenizer":
        """Load ``vocab.json`` and ``tokenizer_config.json`` (and the special tokens map) of a folder or hub repo."""
        options = HubOptions.from_kwargs(kwargs)
        for key in ("use_fast", "trust_remote_code", "force_download", "proxies", "_from_auto"):
            kwargs.pop(key, None)
        vocab_path = resolve_file(path_or_repo, VOCAB_FILE, options, required=False)
        if vocab_path is None:
            raise HubError(
                f"{VOCAB_FILE} not found in {str(path_or_repo)!r}: a Wav2Vec2 CTC tokenizer is a character vocabulary "
                "in vocab.json. Pass the folder of a CTC checkpoint, or build one with Wav2Vec2CTCTokenizer(vocab)."
            )
        vocab = _read_json(vocab_path)
        config: dict[str, Any] = {}
        config_path = resolve_file(path_or_repo, TOKENIZER_CONFIG_FILE, options, required=False)
        if config_path is not None:
            config.update(_read_json(config_path))
        map_path = resolve_file(path_or_repo, SPECIAL_TOKENS_MAP_FILE, options, required=False)
        if map_path is not None:
            for key, value in _read_json(map_path).items():
                config.setdefault(key, value)
        extra = config.pop("extra_special_tokens", None)
        if isinstance(extra, list) and not config.get("additional_special_tokens"):
            config["additional_special_tokens"] = extra
        config.update(kwargs)
        config["name_or_path"] = str(path_or_repo)
        return cls(vocab, **config)

    def _tokenizer_config(self) -> dict[str, Any]:
        config = dict(self._config)
        config.update(
            tokenizer_class="Wav2Vec2CTCTokenizer",
            word_delimiter_token=self.word_delimiter_token,
            replace_word_delimiter_char=self.replace_word_delimiter_char,
            do_lower_case=self.do_lower_case,
            target_lang=self.target_lang,
            padding_side=self.padding_side,
            model_max_length=self.model_max_length,
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
        )
        config.update({name: token for name, token in self._named.items() if token is not None})
        if self.additional_special_tokens:
            config["additional_special_tokens"] = list(self.additional_special_tokens)
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``; return their paths."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ProcessingError(f"save_pretrained needs a directory, but {directory} is a file.")
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in (
            (VOCAB_FILE, self.vocab),
            (TOKENIZER_CONFIG_FILE, self._tokenizer_config()),
            (SPECIAL_TOKENS_MAP_FILE, self.special_tokens_map),
        ):
            path = directory / name
            atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            written.append(str(path))
        return tuple(written)

    def __repr__(self) -> str:
        return f"Wav2Vec2CTCTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProcessingError(f"Cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProcessingError(f"{path} must hold a JSON object.")
    return data
