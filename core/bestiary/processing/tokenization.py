"""``Tokenizer``: a fast tokenizer over the ``tokenizers`` library, in transformers' file format.

A tokenizer folder holds ``tokenizer.json`` (the whole pipeline: normalizer,
pre-tokenizer, model, post-processor, decoder, added tokens),
``tokenizer_config.json`` (special tokens, padding side, maximum length, chat
template, ...), optionally ``special_tokens_map.json`` and
``chat_template.jinja``. A folder with only a WordPiece ``vocab.txt`` (old BERT
checkpoints) is converted on load.

This module imports neither torch nor jinja2: tensors are built and chat
templates are rendered by imports inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

from bestiary.errors import HubError, ProcessingError
from bestiary.hub import HubOptions, is_local, resolve_file
from bestiary.processing.batch_feature import BatchFeature

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_JSON_FILE = "chat_template.json"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
VOCAB_FILE = "vocab.txt"

#: transformers' stand-in for "no maximum length" (``int(1e30)``); lengths above 1e20 count as unlimited.
VERY_LARGE_INTEGER = int(1e30)
_UNLIMITED = int(1e20)

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

_DEFAULT_INPUT_NAMES = ["input_ids", "attention_mask"]
_BERT_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]
# What transformers' tokenizer classes return by default, by ``tokenizer_class`` (without "Fast").
_CLASS_INPUT_NAMES: dict[str, list[str]] = {
    **dict.fromkeys(
        ("BertTokenizer", "ElectraTokenizer", "SqueezeBertTokenizer", "LayoutLMTokenizer", "MobileBertTokenizer",
         "LxmertTokenizer", "ConvBertTokenizer", "MarkupLMTokenizer", "DPRQuestionEncoderTokenizer",
         "DPRContextEncoderTokenizer"),
        _BERT_INPUT_NAMES,
    ),
    **dict.fromkeys(
        ("DebertaTokenizer", "DebertaV2Tokenizer", "CanineTokenizer", "LayoutLMv2Tokenizer", "TapasTokenizer"),
        ["input_ids", "attention_mask", "token_type_ids"],
    ),
    "FNetTokenizer": ["input_ids", "token_type_ids"],
    **dict.fromkeys(
        ("PreTrainedTokenizer", "TokenizersBackend", "DistilBertTokenizer", "MPNetTokenizer", "FunnelTokenizer",
         "RoFormerTokenizer", "RobertaTokenizer", "XLMRobertaTokenizer",
         "DPRReaderTokenizer", "GPT2Tokenizer", "LlamaTokenizer", "Qwen2Tokenizer"),
        _DEFAULT_INPUT_NAMES,
    ),
}
_BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
}
_LEFT_PADDING_CLASSES = frozenset(
    {"LlamaTokenizer", "CodeLlamaTokenizer", "CohereTokenizer", "GemmaTokenizer", "Siglip2Tokenizer", "XLNetTokenizer"}
)
# Keys of a loaded tokenizer_config.json that describe where files were, not how to tokenize.
_NOT_SAVED_KEYS = frozenset(
    {"name_or_path", "tokenizer_file", "vocab_file", "merges_file", "special_tokens_map_file", "added_tokens_decoder",
     "is_local", "local_files_only", "files_loaded", "chat_template", "tokenizer_class", "additional_special_tokens",
     "extra_special_tokens", "model_specific_special_tokens"}
)
_IGNORED_LOAD_KWARGS = ("use_fast", "trust_remote_code", "force_download", "resume_download", "proxies", "_from_auto")
_PADDING_STRATEGIES = {"longest", "max_length", "do_not_pad"}
_TRUNCATION_STRATEGIES = {"longest_first", "only_first", "only_second", "do_not_truncate"}


# --------------------------------------------------------------------------------------------------
# BatchEncoding
# --------------------------------------------------------------------------------------------------
class BatchEncoding(BatchFeature):
    """The output of a tokenizer: a dict of model inputs with attribute access.

    Keys are model input names (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ...); ``.to(device)`` moves tensors. When produced by
    :class:`Tokenizer` it also keeps the ``tokenizers`` encodings, which answer
    alignment questions (:meth:`word_ids`, :meth:`char_to_token`, ...).
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        encodings: Sequence[Any] | None = None,
        tensor_type: str | None = None,
    ) -> None:
        self._encodings = list(encodings) if encodings is not None else None
        super().__init__(dict(data or {}), tensor_type=tensor_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_encodings":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no key {name!r}; keys are {sorted(self)}.") from None

    def __getitem__(self, key: str | int) -> Any:
        """``batch["input_ids"]`` returns a value; ``batch[i]`` the ``tokenizers`` encoding of sequence ``i``."""
        if isinstance(key, int) and not isinstance(key, bool):
            return self._encoding(key)
        return super().__getitem__(key)

    def __reduce__(self):  # pickled as (data, encodings), so DataLoader workers get the alignment data too
        return (BatchEncoding, (dict(self), self._encodings))

    @property
    def encodings(self) -> list[Any] | None:
        """The ``tokenizers.Encoding`` of each sequence (None when built from plain data)."""
        return self._encodings

    def _encoding(self, batch_index: int) -> Any:
        if not self._encodings:
            raise ProcessingError(
                "This BatchEncoding holds no tokenizers encodings (it was built from plain data or by pad()); "
                "alignment methods need the output of calling the tokenizer on text."
            )
        return self._encodings[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str]:
        """Return the token strings of sequence ``batch_index``."""
        return self._encoding(batch_index).tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Return, for each token, the index of the word it comes from (None for special and padding tokens)."""
        return self._encoding(batch_index).word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Return, for each token, 0 or 1 for the first or second text of a pair (None for special tokens)."""
        return self._encoding(batch_index).sequence_ids

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """Return the index of the token covering a character (``(char)`` or ``(batch, char)``)."""
        batch, char = (0, batch_or_char_index) if char_index is None else (batch_or_char_index, char_index)
        return self._encoding(batch).char_to_token(char, sequence_index)

    def char_to_word(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """Return the index of the word covering a character (``(char)`` or ``(batch, char)``)."""
        batch, char = (0, batch_or_char_index) if char_index is None else (batch_or_char_index, char_index)
        return self._encoding(batch).char_to_word(char, sequence_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> tuple[int, int] | None:
        """Return the ``(start, end)`` character span of a token (``(token)`` or ``(batch, token)``)."""
        batch, token = (0, batch_or_token_index) if token_index is None else (batch_or_token_index, token_index)
        return self._encoding(batch).token_to_chars(token)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """Return the index of the word a token belongs to (``(token)`` or ``(batch, token)``)."""
        batch, token = (0, batch_or_token_index) if token_index is None else (batch_or_token_index, token_index)
        return self._encoding(batch).token_to_word(token)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> tuple[int, int] | None:
        """Return the ``(start, end)`` token span of a word (``(word)`` or ``(batch, word)``)."""
        batch, word = (0, batch_or_word_index) if word_index is None else (batch_or_word_index, word_index)
        return self._encoding(batch).word_to_tokens(word, sequence_index)

    def __repr__(self) -> str:
        return f"BatchEncoding({dict.__repr__(self)})"


def _to_python(value: Any) -> Any:
    """Turn tensors, arrays and numpy scalars (also nested in lists) into python ints and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_python(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
def _special_token_property(name: str) -> property:
    def getter(self: Tokenizer) -> str | None:
        return self._named_tokens.get(name)

    def setter(self: Tokenizer, value: str | AddedToken | None) -> None:
        self._named_tokens[name] = _token_text(value, name)

    return property(getter, setter, doc=f"The {name.replace('_', ' ')} as a string, or None if unset.")


def _special_id_property(name: str) -> property:
    def getter(self: Tokenizer) -> int | None:
        token = self._named_tokens.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def setter(self: Tokenizer, value: int | None) -> None:
        self._named_tokens[name] = None if value is None else self._id_to_token_checked(value, name)

    return property(getter, setter, doc=f"The id of the {name.replace('_', ' ')}, or None if unset.")


class Tokenizer:
    """A fast tokenizer reading and writing transformers' tokenizer files.

    Build one with :meth:`from_pretrained` (a folder or hub repo id), or from a
    ``tokenizers.Tokenizer`` and its special tokens::

        Tokenizer(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")

    Keyword arguments other than the ones named below are kept as
    ``tokenizer_config.json`` entries and written back by :meth:`save_pretrained`;
    keys ending in ``_token`` name extra special tokens (``image_token=...``).
    """

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    sep_token = _special_token_property("sep_token")
    pad_token = _special_token_property("pad_token")
    cls_token = _special_token_property("cls_token")
    mask_token = _special_token_property("mask_token")
    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    sep_token_id = _special_id_property("sep_token")
    pad_token_id = _special_id_property("pad_token")
    cls_token_id = _special_id_property("cls_token")
    mask_token_id = _special_id_property("mask_token")

    pad_token_type_id = 0

    def __init__(
        self,
        tokenizer_object: BackendTokenizer | None = None,
        *,
        tokenizer_file: str | os.PathLike | None = None,
        bos_token: str | AddedToken | None = None,
        eos_token: str | AddedToken | None = None,
        unk_token: str | AddedToken | None = None,
        sep_token: str | AddedToken | None = None,
        pad_token: str | AddedToken | None = None,
        cls_token: str | AddedToken | None = None,
        mask_token: str | AddedToken | None = None,
        additional_special_tokens: Sequence[str | AddedToken] | None = None,
        model_max_length: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        model_input_names: Sequence[str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        chat_template: str | Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        tokenizer_class: str | None = None,
        name_or_path: str = "",
        **config: Any,
    ) -> None:
        if tokenizer_object is None:
            if tokenizer_file is None:
                raise ProcessingError(
                    "Tokenizer needs tokenizer_object= (a tokenizers.Tokenizer) or tokenizer_file= (a tokenizer.json "
                    "path); to load a folder or hub repo use Tokenizer.from_pretrained(path_or_repo)."
                )
            tokenizer_object = _read_backend(Path(tokenizer_file))
        if not isinstance(tokenizer_object, BackendTokenizer):
            raise ProcessingError(
                f"tokenizer_object must be a tokenizers.Tokenizer, got {type(tokenizer_object).__name__}."
            )
        self._backend = tokenizer_object
        self.name_or_path = str(name_or_path)
        self.tokenizer_class = tokenizer_class
        class_name = (tokenizer_class or "").removesuffix("Fast")

        # Padding and truncation baked into tokenizer.json become defaults, then the backend is reset:
        # every call sets exactly what it asks for.
        self._saved_padding = tokenizer_object.padding
        self._saved_truncation = tokenizer_object.truncation
        tokenizer_object.no_padding()
        tokenizer_object.no_truncation()
        if self._saved_padding is not None and pad_token is None:
            pad_token = self._saved_padding.get("pad_token")

        added_tokens_decoder = config.pop("added_tokens_decoder", None) or {}
        named: dict[str, Any] = {
            "bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "sep_token": sep_token,
            "pad_token": pad_token, "cls_token": cls_token, "mask_token": mask_token,
        }
        extra = list(additional_special_tokens or [])
        for key in ("extra_special_tokens", "additional_special_tokens", "model_specific_special_tokens"):
            value = config.pop(key, None)
            if isinstance(value, Mapping):
                named.update(value)
            elif isinstance(value, (list, tuple)):
                extra.extend(token for token in value if token not in extra)
        for key in [k for k, v in config.items() if k.endswith("_token") and _is_token_value(v)]:
            named[key] = config.pop(key)
        self._register_special_tokens(added_tokens_decoder, named, extra)
        self._named_tokens: dict[str, str | None] = {k: _token_text(v, k) for k, v in named.items()}
        self._extra_special_tokens: list[str] = _unique([_token_text(t, "additional_special_tokens") for t in extra])

        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = _check_side(
            padding_side
            or (self._saved_padding or {}).get("direction")
            or ("left" if class_name in _LEFT_PADDING_CLASSES else "right"),
            "padding_side",
        )
        self.truncation_side = _check_side(
            truncation_side or (self._saved_truncation or {}).get("direction") or "right", "truncation_side"
        )
        if model_input_names is not None:
            self.model_input_names = list(model_input_names)
        elif class_name in _CLASS_INPUT_NAMES:
            self.model_input_names = list(_CLASS_INPUT_NAMES[class_name])
        elif _post_processor_sets_type_ids(tokenizer_object):
            self.model_input_names = list(_BERT_INPUT_NAMES)
        else:
            self.model_input_names = list(_DEFAULT_INPUT_NAMES)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.split_special_tokens = bool(split_special_tokens)
        self.chat_template = chat_template
        self._config = {k: v for k, v in config.items() if k not in _NOT_SAVED_KEYS}
        self._warned_too_long = False

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load a tokenizer from a local folder or a hub repo id.

        Reads ``tokenizer.json`` (or, failing that, a WordPiece ``vocab.txt``),
        ``tokenizer_config.json``, ``special_tokens_map.json`` and the chat
        template files. Hub options (``revision``, ``cache_dir``,
        ``local_files_only``, ``token``, ``subfolder``) are accepted; other
        keyword arguments override ``tokenizer_config.json`` entries
        (for example ``padding_side="left"``).
        """
        options = HubOptions.from_kwargs(kwargs)
        for key in _IGNORED_LOAD_KWARGS:
            if key in kwargs:
                logger.debug("Ignoring %s=%r: it has no meaning in bestiary.", key, kwargs.pop(key))

        def find(filename: str) -> Path | None:
            return resolve_file(path_or_repo, filename, options, required=False)

        config_path = find(TOKENIZER_CONFIG_FILE)
        config = _read_json(config_path) if config_path else {}
        if "added_tokens_decoder" not in config:
            # Older checkpoints keep their special tokens in special_tokens_map.json, which then wins.
            map_path = find(SPECIAL_TOKENS_MAP_FILE)
            for key, value in (_read_json(map_path) if map_path else {}).items():
                if key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                    known = list(config.get(key) or [])
                    config[key] = known + [token for token in value if token not in known]
                else:
                    config[key] = value
        templates = _read_chat_templates(path_or_repo, find, options)
        if templates:
            config["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
        elif "chat_template" not in config:
            json_template = find(CHAT_TEMPLATE_JSON_FILE)
            if json_template is not None:
                config["chat_template"] = _read_json(json_template).get("chat_template")
        config.update(kwargs)
        config.pop("tokenizer_object", None)

        tokenizer_path = find(TOKENIZER_FILE)
        if tokenizer_path is not None:
            backend = _read_backend(tokenizer_path)
        else:
            vocab_path = find(VOCAB_FILE)
            if vocab_path is None:
                raise HubError(_missing_tokenizer_message(path_or_repo, options, find))
            config.setdefault("tokenizer_class", "BertTokenizer")
            backend = _wordpiece_from_vocab(vocab_path, config)
        if str(config.get("tokenizer_class", "")).removesuffix("Fast") == "BertTokenizer":
            for name, default in _BERT_SPECIAL_TOKENS.items():
                if config.get(name) is None:
                    config[name] = default
        config["name_or_path"] = str(path_or_repo)
        return cls(tokenizer_object=backend, **config)

    def _register_special_tokens(
        self, added_tokens_decoder: Mapping[Any, Any], named: Mapping[str, Any], extra: Sequence[Any]
    ) -> None:
        """Add special tokens the backend does not know yet as added tokens (the way transformers does)."""
        known = {token.content for token in self._backend.get_added_tokens_decoder().values()}
        to_add: list[AddedToken] = []
        candidates = [
            _added_token(value, special=None)
            for _, value in sorted(added_tokens_decoder.items(), key=lambda item: int(item[0]))
        ]
        candidates += [_added_token(value, special=True) for value in named.values() if value is not None]
        candidates += [_added_token(value, special=True) for value in extra]
        for token in candidates:
            if token.content not in known:
                to_add.append(token)
                known.add(token.content)
        if to_add:
            self._backend.add_tokens(to_add)

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the tokenizer files in transformers' format; return the paths written.

        Writes ``tokenizer.json``, ``tokenizer_config.json``,
        ``special_tokens_map.json`` and, when a chat template is set,
        ``chat_template.jinja`` (named templates other than "default" go to
        ``additional_chat_templates/<name>.jinja``). Every file is written to a
        temporary name in the folder, then renamed.
        """
        from bestiary.processing.base import atomic_write_text

        directory = Path(save_directory)
        if directory.is_file():
            raise ProcessingError(f"save_pretrained needs a directory, but {directory} is a file.")
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []

        def write(path: Path, text: str) -> None:
            atomic_write_text(path, text)
            written.append(path)

        templates = self._chat_templates()
        for name, template in templates.items():
            if name == "default":
                write(directory / CHAT_TEMPLATE_FILE, template)
            else:
                if not re.fullmatch(r"[\w][\w.-]*", name):
                    raise ProcessingError(f"Chat template name {name!r} cannot be used as a file name.")
                (directory / CHAT_TEMPLATE_DIR).mkdir(exist_ok=True)
                write(directory / CHAT_TEMPLATE_DIR / f"{name}.jinja", template)
        write(directory / TOKENIZER_CONFIG_FILE, _dump_json(self._tokenizer_config()))
        special_map: dict[str, Any] = dict(self.special_tokens_map)
        if self._extra_special_tokens:
            special_map["additional_special_tokens"] = list(self._extra_special_tokens)
        write(directory / SPECIAL_TOKENS_MAP_FILE, _dump_json(special_map))
        write(directory / TOKENIZER_FILE, self._backend_json())
        logger.info("Tokenizer saved in %s", directory)
        return tuple(str(path) for path in written)

    def _tokenizer_config(self) -> dict[str, Any]:
        config = dict(self._config)
        config.update(
            tokenizer_class=self.tokenizer_class or "PreTrainedTokenizerFast",
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            model_input_names=list(self.model_input_names),
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
        )
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        config.update(self.special_tokens_map)
        if self._extra_special_tokens:
            config["additional_special_tokens"] = list(self._extra_special_tokens)
        return config

    def _backend_json(self) -> str:
        """The backend as tokenizer.json text, with the padding and truncation it was loaded with."""
        clone = BackendTokenizer.from_str(self._backend.to_str())
        if self._saved_padding is not None:
            clone.enable_padding(**self._saved_padding)
        else:
            clone.no_padding()
        if self._saved_truncation is not None:
            clone.enable_truncation(**self._saved_truncation)
        else:
            clone.no_truncation()
        return clone.to_str(pretty=True)

    # -- vocabulary and special tokens ---------------------------------------------------------
    @property
    def backend_tokenizer(self) -> BackendTokenizer:
        """The ``tokenizers.Tokenizer`` doing the work."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Return the full vocabulary (added tokens included) as a token-to-id dict."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Return the added tokens by id."""
        return dict(sorted(self._backend.get_added_tokens_decoder().items()))

    def get_added_vocab(self) -> dict[str, int]:
        """Return the added tokens as a token-to-id dict."""
        return {token.content: index for index, token in self.added_tokens_decoder.items()}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Return the id of a token (the unknown token's id when absent), or a list of ids for a list."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            if index is None:
                unk = self._named_tokens.get("unk_token")
                return self._backend.token_to_id(unk) if unk is not None else None
            return index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any:
        """Return the token of an id, or the tokens of a list of ids (special tokens skipped on request)."""
        ids = _to_python(ids)
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skipped]

    def _id_to_token_checked(self, index: int, name: str) -> str:
        token = self._backend.id_to_token(int(index))
        if token is None:
            raise ProcessingError(f"Cannot set {name}_id={index}: the vocabulary (size {len(self)}) has no such id.")
        return token

    @property
    def additional_special_tokens(self) -> list[str]:
        """Special tokens without a named role (skipped by ``decode(skip_special_tokens=True)``)."""
        return list(self._extra_special_tokens)

    @additional_special_tokens.setter
    def additional_special_tokens(self, tokens: Sequence[str | AddedToken] | None) -> None:
        self._extra_special_tokens = _unique([_token_text(t, "additional_special_tokens") for t in tokens or []])

    extra_special_tokens = additional_special_tokens

    @property
    def additional_special_tokens_ids(self) -> list[int | None]:
        """Ids of :attr:`additional_special_tokens`."""
        return self.convert_tokens_to_ids(self._extra_special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens that are set (``bos_token``, ..., and model-specific ones like ``image_token``)."""
        return {name: value for name, value in self._named_tokens.items() if value is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token string, named ones first, without duplicates."""
        return _unique(list(self.special_tokens_map.values()) + self._extra_special_tokens)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of :attr:`all_special_tokens`."""
        return [i for i in self.convert_tokens_to_ids(self.all_special_tokens) if i is not None]

    def __getattr__(self, name: str) -> Any:
        # Model-specific named special tokens: ``image_token`` and ``image_token_id``.
        named = self.__dict__.get("_named_tokens")
        if named is not None and not name.startswith("_"):
            if name in named:
                return named[name]
            if name.endswith("_id") and name[:-3] in named:
                token = named[name[:-3]]
                return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_tokens(self, new_tokens: str | AddedToken | Sequence[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens to the vocabulary (those already present are left alone); return how many were new."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        if not new_tokens:
            return 0
        if special_tokens:
            return self._backend.add_special_tokens(list(new_tokens))
        return self._backend.add_tokens(list(new_tokens))

    def add_special_tokens(
        self,
        special_tokens_dict: Mapping[str, str | AddedToken | Sequence[str | AddedToken]],
        replace_additional_special_tokens: bool = True,
    ) -> int:
        """Set named special tokens (``{"pad_token": "<pad>"}``) and add them to the vocabulary.

        ``additional_special_tokens`` (or ``extra_special_tokens``) replaces the
        current list, or extends it when ``replace_additional_special_tokens``
        is False. Returns the number of tokens new to the vocabulary.
        """
        to_add: list[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(value, (str, AddedToken)) or not isinstance(value, Sequence):
                    raise ProcessingError(f"{key} must be a list of tokens, got {value!r}.")
                tokens = [_added_token(token, special=True) for token in value]
                texts = [token.content for token in tokens]
                if replace_additional_special_tokens:
                    self._extra_special_tokens = _unique(texts)
                else:
                    self._extra_special_tokens = _unique(self._extra_special_tokens + texts)
                to_add.extend(tokens)
            elif key in SPECIAL_TOKEN_NAMES or key.endswith("_token"):
                if not isinstance(value, (str, AddedToken)):
                    raise ProcessingError(f"{key} must be a string or an AddedToken, got {value!r}.")
                token = _added_token(value, special=True)
                self._named_tokens[key] = token.content
                to_add.append(token)
            else:
                raise ProcessingError(
                    f"add_special_tokens got the unknown key {key!r}; use one of {', '.join(SPECIAL_TOKEN_NAMES)}, "
                    "additional_special_tokens, or a name ending in '_token'."
                )
        return self.add_tokens(to_add, special_tokens=True)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Return how many special tokens the post-processor adds to one text (or to a pair)."""
        return self._backend.num_special_tokens_to_add(pair)

    # -- encoding ----------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        split_special_tokens: bool | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Tokenize a text, a pair of texts, or a batch of either; return a :class:`BatchEncoding`.

        ``padding``: False/"do_not_pad", True/"longest", or "max_length".
        ``truncation``: False/"do_not_truncate", True/"longest_first",
        "only_first" or "only_second"; giving only ``max_length`` truncates
        with "longest_first". Without ``max_length``, "max_length" padding and
        truncation use ``model_max_length``. A single text gives flat lists
        (tensors keep a batch dimension of 1).
        """
        pad_mode, trunc_mode, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of, verbose)
        batched, inputs = _batch_inputs(text, text_pair, is_split_into_words)
        if padding_side is not None:
            _check_side(padding_side, "padding_side")
        self._configure_backend(pad_mode, trunc_mode, max_length, stride, pad_to_multiple_of, padding_side)
        split = self.split_special_tokens if split_special_tokens is None else bool(split_special_tokens)
        if self._backend.encode_special_tokens != split:
            self._backend.encode_special_tokens = split
        try:
            encodings = self._backend.encode_batch(
                inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
            )
        except Exception as exc:  # tokenizers raises plain Exceptions (e.g. truncation impossible)
            raise ProcessingError(f"Tokenization failed: {exc}") from exc

        want_types = "token_type_ids" in self.model_input_names if return_token_type_ids is None else return_token_type_ids
        want_mask = "attention_mask" in self.model_input_names if return_attention_mask is None else return_attention_mask
        fields = {  # output key -> tokenizers.Encoding attribute
            "input_ids": "ids",
            "token_type_ids": "type_ids" if want_types else None,
            "attention_mask": "attention_mask" if want_mask else None,
            "special_tokens_mask": "special_tokens_mask" if return_special_tokens_mask else None,
            "offset_mapping": "offsets" if return_offsets_mapping else None,
        }
        fields = {key: attribute for key, attribute in fields.items() if attribute is not None}
        data: dict[str, list[Any]] = {key: [] for key in fields}
        if return_length:
            data["length"] = []
        flat: list[Any] = []
        sample_of: list[int] = []
        for sample, encoding in enumerate(encodings):
            for piece in [encoding] + (list(encoding.overflowing) if return_overflowing_tokens else []):
                flat.append(piece)
                sample_of.append(sample)
                for key, attribute in fields.items():
                    data[key].append(getattr(piece, attribute))
                if return_length:
                    data["length"].append(len(piece.ids))
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of
        if verbose:
            self._warn_if_too_long(data["input_ids"], max_length)
        if not batched and return_tensors is None and not return_overflowing_tokens:
            single = {key: value[0] if value and isinstance(value[0], list) else value for key, value in data.items()}
            return BatchEncoding(single, flat)
        return BatchEncoding(data, flat, tensor_type=return_tensors)

    def _strategies(
        self,
        padding: bool | str,
        truncation: bool | str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        verbose: bool,
    ) -> tuple[str | None, str | None, int | None]:
        """Resolve padding/truncation arguments to ("longest"|"max_length"|None, strategy|None, max_length)."""
        padding = getattr(padding, "value", padding)
        truncation = getattr(truncation, "value", truncation)
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            if verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
                logger.warning("max_length is ignored when padding=True without truncation; use padding='max_length'.")
            pad_mode = "longest"
        elif padding in (False, None, "do_not_pad"):
            pad_mode = None
        elif padding in _PADDING_STRATEGIES:
            pad_mode = padding
        else:
            raise ProcessingError(f"padding={padding!r} is not valid; use True, False, 'longest' or 'max_length'.")
        if truncation is True:
            trunc_mode = "longest_first"
        elif truncation in (False, None, "do_not_truncate"):
            trunc_mode = None
        elif truncation in _TRUNCATION_STRATEGIES:
            trunc_mode = truncation
        else:
            raise ProcessingError(
                f"truncation={truncation!r} is not valid; use True, False, 'longest_first', 'only_first' "
                "or 'only_second'."
            )
        if max_length is None:
            limited = self.model_max_length <= _UNLIMITED
            if pad_mode == "max_length":
                if limited:
                    max_length = self.model_max_length
                else:
                    pad_mode = None
            if trunc_mode is not None:
                if limited:
                    max_length = self.model_max_length
                else:
                    trunc_mode = None
        if pad_mode is not None and (self.pad_token is None or self.pad_token_id is None):
            raise ProcessingError(
                "Asked to pad, but the tokenizer has no padding token. Set one first, for example "
                "`tokenizer.pad_token = tokenizer.eos_token`, or add one with "
                "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`."
            )
        if (
            trunc_mode is not None
            and pad_mode is not None
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ProcessingError(
                f"Truncation and padding are both on, but max_length={max_length} is not a multiple of "
                f"pad_to_multiple_of={pad_to_multiple_of}; choose a max_length that is."
            )
        return pad_mode, trunc_mode, max_length

    def _configure_backend(
        self,
        pad_mode: str | None,
        trunc_mode: str | None,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
    ) -> None:
        backend = self._backend
        if trunc_mode is None:
            if backend.truncation is not None:
                backend.no_truncation()
        else:
            target = {"max_length": max_length, "stride": stride, "strategy": trunc_mode,
                      "direction": self.truncation_side}
            if backend.truncation != target:
                try:
                    backend.enable_truncation(**target)
                except Exception as exc:
                    raise ProcessingError(f"Invalid truncation settings {target}: {exc}") from exc
        if pad_mode is None:
            if backend.padding is not None:
                backend.no_padding()
        else:
            target = {
                "length": max_length if pad_mode == "max_length" else None,
                "pad_to_multiple_of": pad_to_multiple_of,
                "pad_id": self.pad_token_id,
                "pad_token": self.pad_token,
                "pad_type_id": self.pad_token_type_id,
                "direction": padding_side or self.padding_side,
            }
            if backend.padding != target:
                backend.enable_padding(**target)

    def _warn_if_too_long(self, sequences: list[list[int]], max_length: int | None) -> None:
        if max_length is not None or self._warned_too_long or self.model_max_length > _UNLIMITED:
            return
        longest = max((len(ids) for ids in sequences), default=0)
        if longest > self.model_max_length:
            logger.warning(
                "A tokenized sequence has %d tokens, more than this model's maximum of %d; the model may fail on it. "
                "Pass truncation=True to cut it.",
                longest,
                self.model_max_length,
            )
            self._warned_too_long = True

    def encode(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Return the token ids of a text (or pair); like ``tokenizer(text)["input_ids"]``."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Return the token strings of a text (or pair), without special tokens unless asked."""
        return self(text, pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    def pad(
        self,
        encoded_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad already-encoded inputs (one dict of lists, a dict of batched lists, or a list of dicts).

        Usable as a DataLoader ``collate_fn``. Tensors or arrays given as input
        come back as the same kind of tensor unless ``return_tensors`` says otherwise.
        """
        if isinstance(encoded_inputs, Sequence) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0]}
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ProcessingError(
                f"pad() needs {main!r} in its input, got keys {list(encoded_inputs)}; pass the tokenizer's output."
            )
        inputs = dict(encoded_inputs)
        first = inputs[main]
        probe = first[0] if isinstance(first, (list, tuple)) and first else first
        if isinstance(probe, (list, tuple)) and probe:
            probe = probe[0]
        if return_tensors is None and not isinstance(probe, (int, list, tuple)):
            kind = type(probe).__module__.split(".")[0]
            return_tensors = {"torch": "pt", "numpy": "np"}.get(kind)
        inputs = {key: _to_python(value) for key, value in inputs.items()}
        pad_mode, _, max_length = self._strategies(padding, False, max_length, None, verbose=True)
        want_mask = "attention_mask" in self.model_input_names if return_attention_mask is None else return_attention_mask
        side = _check_side(padding_side or self.padding_side, "padding_side")
        sequences = inputs[main]
        if not sequences:
            if want_mask:
                inputs["attention_mask"] = []
            return BatchEncoding(inputs)
        if not isinstance(sequences[0], list):
            return BatchEncoding(
                self._pad_one(inputs, pad_mode, max_length, pad_to_multiple_of, side, want_mask),
                tensor_type=return_tensors,
            )
        if pad_mode == "longest":
            pad_mode, max_length = "max_length", max(len(ids) for ids in sequences)
        rows = [
            self._pad_one({k: v[i] for k, v in inputs.items()}, pad_mode, max_length, pad_to_multiple_of, side, want_mask)
            for i in range(len(sequences))
        ]
        batch = {key: [row[key] for row in rows] for key in rows[0]}
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad_one(
        self,
        row: dict[str, Any],
        pad_mode: str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        side: str,
        want_mask: bool,
    ) -> dict[str, Any]:
        main = self.model_input_names[0]
        ids = list(row[main])
        if pad_mode == "longest":
            max_length = len(ids)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        if want_mask and "attention_mask" not in row:
            row["attention_mask"] = [1] * len(ids)
        missing = (max_length - len(ids)) if pad_mode is not None and max_length is not None else 0
        if missing <= 0:
            return row
        fill = {main: self.pad_token_id, "attention_mask": 0, "token_type_ids": self.pad_token_type_id,
                "special_tokens_mask": 1}
        for key, value in fill.items():
            if key in row and (key != "attention_mask" or want_mask):
                row[key] = list(row[key]) + [value] * missing if side == "right" else [value] * missing + list(row[key])
        return row

    # -- decoding ----------------------------------------------------------------------------
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Turn token ids back into text; a batch (list of lists, 2-D tensor) gives a list of texts.

        ``clean_up_tokenization_spaces`` defaults to the value in
        ``tokenizer_config.json``; like transformers, it is not applied to BPE
        tokenizers, where it would remove real spaces.
        """
        ids = _to_python(token_ids)
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            return [self._decode_one(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in ids]
        return self._decode_one(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """Decode each sequence of a batch; return the list of texts."""
        sequences = _to_python(sequences)
        if isinstance(sequences, Mapping):
            sequences = sequences["input_ids"]
        if sequences and not isinstance(sequences[0], list):
            sequences = [sequences]
        return [self._decode_one(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    def _decode_one(self, ids: list[int], skip_special_tokens: bool, clean_up: bool | None) -> str:
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        clean_up = self.clean_up_tokenization_spaces if clean_up is None else clean_up
        if clean_up and type(self._backend.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join token strings into text with the backend's decoder."""
        decoder = self._backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    # -- chat templates ----------------------------------------------------------------------
    @property
    def chat_template(self) -> str | dict[str, str] | None:
        """The chat template: a Jinja string, a dict of named templates, or None."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value: str | Mapping[str, str] | Sequence[Mapping[str, str]] | None) -> None:
        if value is None or isinstance(value, str):
            self._chat_template = value
        elif isinstance(value, Mapping):
            self._chat_template = {str(k): str(v) for k, v in value.items()}
        elif isinstance(value, Sequence) and all(isinstance(t, Mapping) and {"name", "template"} <= t.keys() for t in value):
            self._chat_template = {str(t["name"]): str(t["template"]) for t in value}
        else:
            raise ProcessingError(
                "chat_template must be a Jinja string, a dict of named templates, or a list of "
                f'{{"name": ..., "template": ...}} entries; got {type(value).__name__}.'
            )

    def _chat_templates(self) -> dict[str, str]:
        template = self._chat_template
        if template is None:
            return {}
        return {"default": template} if isinstance(template, str) else dict(template)

    def get_chat_template(self, chat_template: str | None = None, tools: Sequence[Any] | None = None) -> str:
        """Return the Jinja source to use: ``chat_template`` itself, the named template it names, or the default.

        With several named templates, "tool_use" is chosen when tools are given
        and exists, else "default".
        """
        templates = self._chat_templates()
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if not templates:
            raise ProcessingError(
                f"The tokenizer {self.name_or_path or ''} has no chat template (no chat_template.jinja and no "
                "'chat_template' in tokenizer_config.json). Pass chat_template='...' or set tokenizer.chat_template."
            )
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ProcessingError(
            f"This tokenizer has several chat templates and none is named 'default': {sorted(templates)}. "
            "Pass chat_template='<name>' to choose one."
        )

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        tools: Sequence[Mapping[str, Any] | Any] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> Any:
        """Render a conversation (or a batch of them) with the chat template, and tokenize it unless told not to.

        Returns the rendered text (``tokenize=False``), the token ids, or a
        :class:`BatchEncoding` (``return_dict=True``). ``tools`` are JSON-schema
        dicts or python functions with type hints and a Google-style docstring.
        Extra keyword arguments are passed to the template as variables.

        The rendered text already holds the special tokens the template writes,
        so it is tokenized with ``add_special_tokens=False`` as transformers
        does. Asking for ``tokenizer_kwargs={"add_special_tokens": True}``
        still never doubles a BOS token the template wrote.
        """
        from bestiary.processing.chat_template import render_chat_template, split_conversations

        template = self.get_chat_template(chat_template, tools)
        conversations, batched = split_conversations(conversation)
        variables = {**self.special_tokens_map, **template_kwargs}
        rendered = render_chat_template(
            template,
            conversations,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **variables,
        )
        if not tokenize:
            return rendered if batched else rendered[0]
        kwargs = dict(tokenizer_kwargs or {})
        add_special = bool(kwargs.pop("add_special_tokens", False))
        bos = self.bos_token
        if add_special and bos is not None and any(text.startswith(bos) for text in rendered):
            logger.debug("The rendered chat already starts with %r; not adding special tokens again.", bos)
            add_special = False
        out = self(
            rendered if batched else rendered[0],
            add_special_tokens=add_special,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **kwargs,
        )
        return out if return_dict else out["input_ids"]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def clean_up_tokenization(text: str) -> str:
    """Remove the spaces WordPiece-style decoding leaves before punctuation and English contractions."""
    for spaced, joined in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
        (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):
        text = text.replace(spaced, joined)
    return text


def _batch_inputs(text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[bool, list[Any]]:
    """Return (batched, inputs for tokenizers' encode_batch) after checking the input types."""

    def is_words(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value)

    def valid(value: Any) -> bool:
        if isinstance(value, str):
            return True
        if isinstance(value, (list, tuple)):
            return all(isinstance(item, str) or is_words(item) for item in value)
        return False

    if text is None:
        raise ProcessingError("The tokenizer needs text: a string, a list of strings, or a list of word lists.")
    for name, value in (("text", text), ("text_pair", text_pair)):
        if value is not None and not valid(value):
            raise ProcessingError(
                f"{name} must be a string, a list of strings (a batch, or one pre-split text with "
                f"is_split_into_words=True) or a list of lists of strings; got {type(value).__name__}."
            )
    if is_split_into_words:
        batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
    else:
        batched = isinstance(text, (list, tuple))
    if not batched:
        return False, [(text, text_pair)] if text_pair else [text]
    if isinstance(text_pair, str):
        raise ProcessingError("For a batch of texts, text_pair must be a list of the same length, not a string.")
    if text_pair is None:
        return True, list(text)
    if len(text_pair) != len(text):
        raise ProcessingError(f"text has {len(text)} items but text_pair has {len(text_pair)}; they must match.")
    return True, list(zip(text, text_pair))


def _check_side(side: str, name: str) -> str:
    if side not in ("left", "right"):
        raise ProcessingError(f"{name} must be 'left' or 'right', got {side!r}.")
    return side


def _is_token_value(value: Any) -> bool:
    return isinstance(value, (str, AddedToken)) or (isinstance(value, Mapping) and "content" in value)


def _token_text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ProcessingError(f"{name} must be a string or an AddedToken, got {value!r}.")


def _added_token(value: Any, special: bool | None) -> AddedToken:
    """Build an AddedToken from a string, an AddedToken, or its serialised dict; ``special`` forces the flag."""
    if isinstance(value, AddedToken):
        if special is None or value.special == special:
            return value
        state = value.__getstate__()
    elif isinstance(value, str):
        return AddedToken(value, special=True if special is None else special, normalized=False)
    elif isinstance(value, Mapping) and "content" in value:
        state = {k: v for k, v in value.items() if k != "__type"}
    else:
        raise ProcessingError(f"A special token must be a string or an AddedToken, got {value!r}.")
    if special is not None:
        state["special"] = special
    allowed = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
    return AddedToken(**{key: state[key] for key in allowed if key in state})


def _unique(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(item for item in items if item is not None))


def _post_processor_sets_type_ids(backend: BackendTokenizer) -> bool:
    """True for BERT-style post-processors: ``[CLS] A [SEP]``, with token type 1 for the second text of a pair.

    A template that only prepends a token (Llama's ``<s> A``) does not count,
    even when it gives the second text type 1: those models take no token types.
    """
    processor = backend.post_processor
    if processor is None:
        return False
    state = json.loads(processor.__getstate__())
    kinds = state.get("processors", [state]) if state.get("type") == "Sequence" else [state]
    for kind in kinds:
        if kind.get("type") == "BertProcessing":
            return True
        if kind.get("type") == "TemplateProcessing":
            single = [next(iter(piece)) for piece in kind.get("single", [])]
            wraps = len(single) >= 3 and single[0] == single[-1] == "SpecialToken"
            typed = any(item.get("type_id") for piece in kind.get("pair", []) for item in piece.values())
            if wraps and typed:
                return True
    return False


def _read_json(path: Path) -> dict[str, Any]:
    from bestiary.processing.base import read_json_object

    return read_json_object(path)


def _dump_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _read_backend(path: Path) -> BackendTokenizer:
    try:
        return BackendTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions for bad files
        raise ProcessingError(f"Cannot read {path} as a tokenizers file: {exc}") from exc


def _read_chat_templates(path_or_repo: str | os.PathLike, find: Any, options: HubOptions) -> dict[str, str]:
    """Read chat_template.jinja and (in local folders) additional_chat_templates/*.jinja."""
    templates: dict[str, str] = {}
    default = find(CHAT_TEMPLATE_FILE)
    if default is not None:
        templates["default"] = default.read_text(encoding="utf-8")
    if is_local(path_or_repo):
        folder = Path(path_or_repo).expanduser()
        folder = folder.parent if folder.is_file() else folder
        for extra in sorted((folder / options.subfolder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[extra.stem] = extra.read_text(encoding="utf-8")
    return templates


def _missing_tokenizer_message(path_or_repo: str | os.PathLike, options: HubOptions, find: Any) -> str:
    where = Path(path_or_repo, options.subfolder) if options.subfolder else path_or_repo
    message = (
        f"No tokenizer found in {str(where)!r}: looked for {TOKENIZER_FILE} and {VOCAB_FILE} "
        f"(with {TOKENIZER_CONFIG_FILE} and {SPECIAL_TOKENS_MAP_FILE} for settings)."
    )
    if find("tokenizer.model") is not None:
        message += (
            " The folder has a SentencePiece tokenizer.model, which bestiary does not convert: save the "
            "tokenizer once with transformers (AutoTokenizer.from_pretrained(...).save_pretrained(...)) to get "
            f"a {TOKENIZER_FILE}."
        )
    else:
        message += " Pass the folder of a saved tokenizer (transformers' save_pretrained writes these files)."
    return message


def _wordpiece_from_vocab(vocab_path: Path, config: Mapping[str, Any]) -> BackendTokenizer:
    """Build a BERT WordPiece tokenizer from a ``vocab.txt`` and the flags of tokenizer_config.json."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    lines = vocab_path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {token: index for index, token in enumerate(lines)}

    def special(name: str, default: str) -> str:
        return _token_text(config.get(name), name) or default

    unk, cls_token, sep = special("unk_token", "[UNK]"), special("cls_token", "[CLS]"), special("sep_token", "[SEP]")
    backend = BackendTokenizer(WordPiece(vocab, unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    missing = [token for token in (cls_token, sep) if token not in vocab]
    if missing:
        raise ProcessingError(f"{vocab_path} lacks the special tokens {missing}; it is not a BERT vocabulary.")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep}:0",
        pair=f"{cls_token}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls_token, vocab[cls_token]), (sep, vocab[sep])],
    )
    return backend
