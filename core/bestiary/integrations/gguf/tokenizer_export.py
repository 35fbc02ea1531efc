"""Writing a tokenizer as a GGUF file's ``tokenizer.*`` metadata, in llama.cpp's vocabulary formats.

    metadata = tokenizer_metadata(tokenizer, vocab_size=model.config.vocab_size)

Two vocabularies can be written, the two that the reader (``gguf_tokenizer.py``)
builds back, and each only when the file will split text the way
``tokenizer.json`` does:

- ``"gpt2"``, byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): tokens and merges
  are copied. The regex that splits text before BPE is not stored; readers look
  it up by ``tokenizer.ggml.pre``, which is worked out here from the
  pre-tokenizer and the BPE ``ignore_merges`` flag with the reader's own table
  (``PRE_TOKENIZER_SPLITS``, ``DIGIT_SPLIT_PRE``, ``GPT2_PRE``, ``IGNORE_MERGES_PRE``).
  A tokenizer read from a GGUF file keeps its original name when it fits.
- ``"llama"``, SentencePiece BPE (Llama 2, Mistral): byte fallback to
  ``<0xNN>`` tokens, spaces spelled "▁", a "▁" put before the text. GGUF stores a
  score per token instead of merges, and readers rebuild the merges from the
  scores (every split of a token into two tokens, best score first). A token's
  score is the rank of the first merge that makes it; the rebuilt merges are
  compared with tokenizer.json's before anything is written.

What cannot be written raises :class:`CheckpointError` naming the part of
tokenizer.json at fault (WordPiece and Unigram models, other pre-tokenizers,
normalizers, post-processors adding other tokens than BOS/EOS, merges that no
scores reproduce). The fix is the same each time: save the model without
``tokenizer=`` and keep tokenizer.json beside the GGUF file.

Three approximations are accepted, each logged as a warning when it applies:

- an NFC normalizer (Qwen2's): GGUF readers do not normalize, so only text not
  already in NFC (decomposed accents) tokenizes differently. llama.cpp's own
  converter drops it the same way.
- SentencePiece's legacy normalizer (Prepend "▁" + Replace " " by "▁", Llama 2
  and early Mistral files) and ``Metaspace(prepend_scheme="always")``: written
  with ``add_space_prefix = true``. transformers and bestiary read that as
  ``Metaspace(prepend_scheme="first")``, so text starting with a space or
  following an added token gets one "▁" less than the original; llama.cpp
  reads it like the legacy normalizer.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable, Mapping

from gguf import GGUFValueType
from tokenizers import Tokenizer as BackendTokenizer

from bestiary.errors import CheckpointError

from .gguf_tokenizer import (
    DIGIT_SPLIT_PRE,
    GPT2_PRE,
    IGNORE_MERGES_PRE,
    PRE_TOKENIZER_SPLITS,
    byte_alphabet,
    merges_from_scores,
)
from .writer import TypedValue

__all__ = ["tokenizer_metadata"]

logger = logging.getLogger(__name__)

# llama.cpp's token types.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# The name written for each way of splitting byte-level text when the tokenizer has no GGUF name of its own.
GPT2_NAME = "gpt-2"  # llama.cpp's spelling; the reader also knows "gpt2" and "default"
DIGIT_SPLIT_NAME = "smollm"
SPACE = "▁"
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
PROBE_TEXT = "hello world"
SPECIAL_ROLES = (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding"))
FIX = (
    "Save the model without tokenizer= (model.save_pretrained(folder, gguf=...)) and keep tokenizer.json "
    "beside the GGUF file (tokenizer.save_pretrained(folder))."
)


def tokenizer_metadata(tokenizer: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """Return GGUF ``tokenizer.*`` metadata for ``tokenizer`` (bestiary's or transformers' fast tokenizer).

    ``vocab_size`` (the model's embedding rows) pads the token list with unused
    ``[PAD<id>]`` tokens, as llama.cpp's converter does, so that readers size
    the model from the token count correctly. Raises :class:`CheckpointError`
    when the tokenizer has no GGUF form that tokenizes like it.
    """
    backend = BackendTokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    state = json.loads(backend.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE":
        raise _cannot_write(
            f"model.type is {model.get('type')!r}",
            "GGUF readers build byte-level BPE (tokenizer.ggml.model 'gpt2') and SentencePiece BPE ('llama') only",
        )
    _check_bpe_options(model)
    added = {token.content: token for token in backend.get_added_tokens_decoder().values()}
    _check_added_tokens(added.values())
    tokens = _token_list(backend.get_vocab(with_added_tokens=True), vocab_size)
    merges = [
        tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in model.get("merges") or []
    ]
    if model.get("byte_fallback"):
        metadata = _sentencepiece_metadata(state, tokens, merges, added, tokenizer)
    else:
        metadata = _byte_level_metadata(state, tokens, merges, added, tokenizer)
    metadata.update(_special_metadata(tokenizer, backend, tokens))
    metadata.update(_chat_template_metadata(getattr(tokenizer, "chat_template", None)))
    return metadata


# ---------------------------------------------------------------- shared checks


def _cannot_write(part: str, reason: str) -> CheckpointError:
    return CheckpointError(f"Cannot write this tokenizer into GGUF metadata: tokenizer.json {part}; {reason}. {FIX}")


def _check_bpe_options(model: Mapping[str, Any]) -> None:
    if model.get("dropout"):
        raise _cannot_write(f"model.dropout is {model['dropout']}", "GGUF readers run BPE without dropout")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise _cannot_write(f"model.{key} is {model[key]!r}", "GGUF BPE vocabularies have no subword affixes")


def _check_added_tokens(added: Iterable[Any]) -> None:
    for token in added:
        for flag in ("lstrip", "rstrip", "single_word"):
            if getattr(token, flag, False):
                raise _cannot_write(
                    f"added token {token.content!r} has {flag}=true",
                    "GGUF readers match added tokens exactly, without stripping spaces or word checks",
                )


def _token_list(vocab: Mapping[str, int], vocab_size: int | None) -> list[str]:
    """Tokens by id; ids without a token, and rows up to ``vocab_size``, get an unused ``[PAD<id>]`` token."""
    count = max(vocab.values()) + 1 if vocab else 0
    if vocab_size is not None and count > vocab_size:
        raise CheckpointError(
            f"The tokenizer has {count} tokens but the model's vocab_size is {vocab_size}: GGUF readers size the "
            f"embedding from the token list, so the file would not load. Resize the model's embeddings "
            f"(model.resize_token_embeddings({count})) or pass the tokenizer that belongs to it."
        )
    tokens: list[str | None] = [None] * max(count, vocab_size or 0)
    for token, index in vocab.items():
        tokens[index] = token
    filled = []
    for index, token in enumerate(tokens):
        if token is None:
            token = f"[PAD{index}]"
            if token in vocab:
                raise CheckpointError(f"Token id {index} has no token, and its placeholder {token!r} is taken.")
        filled.append(token)
    return filled


def _steps(component: Mapping[str, Any] | None, sequence_key: str) -> list[Mapping[str, Any]]:
    """The steps of a normalizer / pre-tokenizer (a Sequence flattened; none is an empty list)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [step for inner in component.get(sequence_key) or [] for step in _steps(inner, sequence_key)]
    return [component]


def _describe(steps: list[Mapping[str, Any]]) -> str:
    return json.dumps(steps[0] if len(steps) == 1 else {"type": "Sequence", "steps": steps}, ensure_ascii=False)


# ---------------------------------------------------------------- byte-level BPE ("gpt2")


def _byte_level_metadata(
    state: Mapping[str, Any], tokens: list[str], merges: list[tuple[str, ...]], added: Mapping[str, Any], tokenizer: Any
) -> dict[str, Any]:
    model = state["model"]
    if not merges:
        raise _cannot_write("model.merges is empty", "a byte-level BPE vocabulary needs merges")
    _check_byte_level_normalizer(state.get("normalizer"))
    pre = _pre_name(state.get("pre_tokenizer"), bool(model.get("ignore_merges")), _setting(tokenizer, "gguf_pre"))
    alphabet = frozenset(byte_alphabet().values())
    for token in added:
        if not set(token) <= alphabet:
            raise _cannot_write(
                f"added token {token!r} uses characters outside the byte-level alphabet",
                "byte-level GGUF readers respell such tokens and cannot match them whole",
            )
    known = set(state["model"].get("vocab") or {}) | set(added)
    types = [
        TOKEN_UNUSED if token not in known
        else (TOKEN_CONTROL if added[token].special else TOKEN_USER_DEFINED) if token in added
        else TOKEN_NORMAL
        for token in tokens
    ]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": TypedValue(types, GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.merges": [" ".join(merge) for merge in merges],
    }


def _check_byte_level_normalizer(normalizer: Mapping[str, Any] | None) -> None:
    steps = _steps(normalizer, "normalizers")
    if not steps:
        return
    if [step.get("type") for step in steps] == ["NFC"]:
        logger.warning(
            "tokenizer.json normalizes text to NFC, which GGUF readers (llama.cpp, transformers, bestiary) do not: "
            "text already in NFC tokenizes the same, decomposed accents may not."
        )
        return
    raise _cannot_write(
        f"normalizer is {_describe(steps)}", "GGUF byte-level vocabularies have no normalizer (NFC aside)"
    )


def _pre_name(pre_tokenizer: Mapping[str, Any] | None, ignore_merges: bool, gguf_pre: Any) -> str:
    """The ``tokenizer.ggml.pre`` name that splits text as ``pre_tokenizer`` does (with BPE's ignore_merges)."""
    steps = _steps(pre_tokenizer, "pretokenizers")
    names, preferred = _pre_candidates(steps, ignore_merges)
    if not names:
        what = "pre_tokenizer is " + (_describe(steps) if steps else "null")
        if names is not None and ignore_merges:
            what += " with model.ignore_merges=true"
        raise _cannot_write(what, "no llama.cpp tokenizer.ggml.pre name splits text that way")
    if isinstance(gguf_pre, str) and gguf_pre in names:
        return gguf_pre
    return preferred


def _pre_candidates(steps: list[Mapping[str, Any]], ignore_merges: bool) -> tuple[list[str] | None, str]:
    """Names the reader builds ``steps`` from (None when no shape fits), and the one to prefer."""
    kinds = [step.get("type") for step in steps]
    if not steps or any(step.get("type") == "ByteLevel" and step.get("add_prefix_space") for step in steps):
        return None, ""
    last = steps[-1]
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return ([] if ignore_merges else sorted(GPT2_PRE)), GPT2_NAME
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
        return ([] if ignore_merges else sorted(DIGIT_SPLIT_PRE)), DIGIT_SPLIT_NAME
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if split.get("behavior") != "Isolated" or split.get("invert") or pattern is None:
            return None, ""
        names = [
            name for name, regex in PRE_TOKENIZER_SPLITS.items()
            if regex == pattern and (name in IGNORE_MERGES_PRE) == ignore_merges
        ]
        return names, names[0] if names else ""
    return None, ""


def _setting(tokenizer: Any, key: str) -> Any:
    """A value kept in the tokenizer's saved settings (``tokenizer_config.json`` keys), or None."""
    settings = getattr(tokenizer, "_config", None)
    return settings.get(key) if isinstance(settings, dict) else None


# ---------------------------------------------------------------- SentencePiece BPE ("llama")


def _sentencepiece_metadata(
    state: Mapping[str, Any], tokens: list[str], merges: list[tuple[str, ...]], added: Mapping[str, Any], tokenizer: Any
) -> dict[str, Any]:
    model = state["model"]
    if model.get("ignore_merges"):
        raise _cannot_write("model.ignore_merges is true", "SentencePiece GGUF readers always merge")
    vocab = model.get("vocab") or {}
    missing = [f"<0x{byte:02X}>" for byte in range(256) if f"<0x{byte:02X}>" not in vocab]
    if missing:
        raise _cannot_write(
            f"model.byte_fallback is true but the vocabulary lacks {len(missing)} byte tokens ({missing[0]}, ...)",
            "SentencePiece GGUF readers fall back to all 256 <0xNN> tokens",
        )
    add_space_prefix = _space_prefix(state.get("normalizer"), state.get("pre_tokenizer"))
    scores = _sentencepiece_scores(tokens, merges, set(added))
    unk = model.get("unk_token") or getattr(tokenizer, "unk_token", None)
    types = []
    for token in tokens:
        if token == unk:
            types.append(TOKEN_UNKNOWN)
        elif token in added:
            types.append(TOKEN_CONTROL if added[token].special else TOKEN_USER_DEFINED)
        elif BYTE_TOKEN.fullmatch(token) and token in vocab:
            types.append(TOKEN_BYTE)
        elif token in vocab:
            types.append(TOKEN_NORMAL)
        else:
            types.append(TOKEN_UNUSED)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": TypedValue(scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": TypedValue(types, GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


def _space_prefix(normalizer: Mapping[str, Any] | None, pre_tokenizer: Mapping[str, Any] | None) -> bool:
    """Whether a "▁" goes before the text (``add_space_prefix``), from how tokenizer.json turns spaces into "▁"."""
    norm = _steps(normalizer, "normalizers")
    pre = _steps(pre_tokenizer, "pretokenizers")
    if not norm and len(pre) == 1 and pre[0].get("type") == "Metaspace":
        metaspace = pre[0]
        scheme = metaspace.get("prepend_scheme") or ("always" if metaspace.get("add_prefix_space", True) else "never")
        if metaspace.get("replacement") != SPACE or metaspace.get("split", True):
            raise _cannot_write(
                f"pre_tokenizer is {_describe(pre)}",
                "SentencePiece GGUF readers replace spaces by '▁' without splitting the text there (split=false)",
            )
        if scheme == "always":
            _warn_prefix("Metaspace(prepend_scheme='always')")
        return scheme != "never"
    if not pre:
        kinds = [(step.get("type"), step.get("prepend"), step.get("content"), (step.get("pattern") or {}).get("String"))
                 for step in norm]
        replace = ("Replace", None, SPACE, " ")
        if kinds == [("Prepend", SPACE, None, None), replace]:
            _warn_prefix("the legacy normalizer Prepend('▁') + Replace(' ', '▁')")
            return True
        if kinds == [replace]:
            return False
    part = "normalizer is " + (_describe(norm) if norm else "null")
    part += " and pre_tokenizer is " + (_describe(pre) if pre else "null")
    raise _cannot_write(
        part,
        "SentencePiece GGUF readers only replace spaces by '▁' (Metaspace with split=false, or the "
        "Prepend/Replace normalizer) before BPE",
    )


def _warn_prefix(what: str) -> None:
    logger.warning(
        "tokenizer.json uses %s; it is written as add_space_prefix=true, which transformers and bestiary read as "
        "Metaspace(prepend_scheme='first'): text starting with a space or following an added token gets one '▁' "
        "less than with the original (llama.cpp reads it like the original).",
        what,
    )


def _sentencepiece_scores(tokens: list[str], merges: list[tuple[str, ...]], added: set[str]) -> list[float]:
    """Scores from which ``merges_from_scores`` rebuilds ``merges`` (up to the order of one token's splits).

    First try: every token gets its own score, by the rank of the first merge
    making it. Second try (for merges that were themselves rebuilt from tied
    scores, e.g. read from a GGUF file): a token shares the score of the one
    before when the reader's tie-break already puts it after.
    """
    index = {token: position for position, token in enumerate(tokens)}
    wanted = _model_merges(merges, added)
    problem = ""
    for assign in (_distinct_scores, _tied_scores):
        by_token = assign(wanted, index)
        floor = min(by_token.values(), default=0.0) - 1.0
        scores = [
            0.0 if token in added or BYTE_TOKEN.fullmatch(token) else by_token.get(token, floor) for token in tokens
        ]
        problem = _merge_order_difference(wanted, _model_merges(merges_from_scores(tokens, scores), added))
        if not problem:
            return scores
    raise _cannot_write(
        "model.merges are not in SentencePiece order",
        f"GGUF keeps one score per token and readers merge every split of a token by its score, so {problem}",
    )


def _model_merges(merges: Iterable[tuple[str, ...]], added: set[str]) -> list[tuple[str, str]]:
    """Merges that BPE can apply (added tokens are matched whole before BPE, so merges making them never run)."""
    return [
        (left, right) for left, right in merges
        if left not in added and right not in added and left + right not in added
    ]


def _distinct_scores(merges: list[tuple[str, str]], index: Mapping[str, int]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for left, right in merges:
        scores.setdefault(left + right, -float(len(scores) + 1))
    return scores


def _tied_scores(merges: list[tuple[str, str]], index: Mapping[str, int]) -> dict[str, float]:
    """Share a score with the previous token whenever the reader's tie-break (longer left piece, longer right
    piece, vocabulary order) already sorts the merge after every merge given that score so far."""
    scores: dict[str, float] = {}
    current, last_key = 0.0, None
    for left, right in merges:
        token = left + right
        key = (-len(left), -len(right), index.get(token, -1), index.get(left, -1), index.get(right, -1))
        if token in scores:
            if scores[token] == current and last_key is not None and key > last_key:
                last_key = key
            continue
        if last_key is None or key <= last_key:
            current -= 1.0
        scores[token] = current
        last_key = key
    return scores


def _merge_order_difference(wanted: list[tuple[str, str]], rebuilt: list[tuple[str, str]]) -> str:
    """Empty when both merge lists make the same tokens in the same order (a token's splits in any order)."""
    runs_wanted, runs_rebuilt = _runs(wanted), _runs(rebuilt)
    for (token, pairs), (other, other_pairs) in zip(runs_wanted, runs_rebuilt):
        if token != other:
            return f"tokenizer.json makes {token!r} where the rebuilt merges make {other!r}"
        if pairs != other_pairs:
            extra = sorted(other_pairs - pairs) or sorted(pairs - other_pairs)
            left, right = extra[0]
            return (
                f"{token!r} would also be made from {left!r} + {right!r}, which tokenizer.json never merges"
                if other_pairs - pairs
                else f"tokenizer.json merges {left!r} + {right!r} apart from the other merges making {token!r}"
            )
    if len(runs_wanted) != len(runs_rebuilt):
        longer = runs_rebuilt if len(runs_rebuilt) > len(runs_wanted) else runs_wanted
        token, pairs = longer[min(len(runs_wanted), len(runs_rebuilt))]
        left, right = sorted(pairs)[0]
        if longer is runs_rebuilt:
            return f"{token!r} would also be made from {left!r} + {right!r}, which tokenizer.json never merges"
        return f"tokenizer.json merges {left!r} + {right!r} apart from the other merges making {token!r}"
    return ""


def _runs(merges: list[tuple[str, str]]) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    """Consecutive merges grouped by the token they make."""
    runs: list[tuple[str, set[tuple[str, str]]]] = []
    for left, right in merges:
        token = left + right
        if runs and runs[-1][0] == token:
            runs[-1][1].add((left, right))
        else:
            runs.append((token, {(left, right)}))
    return [(token, frozenset(pairs)) for token, pairs in runs]


# ---------------------------------------------------------------- special tokens and chat templates


def _special_metadata(tokenizer: Any, backend: BackendTokenizer, tokens: list[str]) -> dict[str, Any]:
    """Special token ids and whether BOS / EOS are added, read from what the post-processor does."""
    ids = {token: index for index, token in enumerate(tokens)}
    roles = {role: getattr(tokenizer, role, None) for role, _ in SPECIAL_ROLES}
    first, last = _added_around(backend)
    for role, added_id in (("bos_token", first), ("eos_token", last)):
        if added_id is None:
            continue
        token = tokens[added_id]
        if roles[role] is None:
            roles[role] = token
        elif str(roles[role]) != token:
            raise _cannot_write(
                f"post_processor adds {token!r} but the tokenizer's {role} is {roles[role]!r}",
                f"GGUF can only say that the {role} is added",
            )
    metadata: dict[str, Any] = {}
    for role, key in SPECIAL_ROLES:
        token = roles[role]
        if token is not None and str(token) in ids:
            metadata[f"tokenizer.ggml.{key}_token_id"] = ids[str(token)]
    metadata["tokenizer.ggml.add_bos_token"] = first is not None
    metadata["tokenizer.ggml.add_eos_token"] = last is not None
    return metadata


def _added_around(backend: BackendTokenizer) -> tuple[int | None, int | None]:
    """The id the post-processor puts before a text and the one it puts after (None when it adds none)."""
    plain = backend.encode(PROBE_TEXT, add_special_tokens=False).ids
    full = backend.encode(PROBE_TEXT, add_special_tokens=True).ids
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
    if starts:
        before, after = full[: starts[0]], full[starts[0] + len(plain) :]
        if len(before) <= 1 and len(after) <= 1:
            return (before[0] if before else None), (after[0] if after else None)
    raise _cannot_write(
        f"post_processor turns {plain} into {full}",
        "GGUF can only say whether one BOS token goes first and one EOS token last",
    )


def _chat_template_metadata(template: Any) -> dict[str, Any]:
    """``tokenizer.chat_template`` and, for named templates, ``tokenizer.chat_template.<name>`` and their list."""
    if isinstance(template, str):
        return {"tokenizer.chat_template": template}
    if not isinstance(template, Mapping):
        return {}
    metadata: dict[str, Any] = {}
    names = [name for name in template if name != "default"]
    for name in names:
        metadata[f"tokenizer.chat_template.{name}"] = template[name]
    if names:
        metadata["tokenizer.chat_templates"] = names
    if "default" in template:
        metadata["tokenizer.chat_template"] = template["default"]
    return metadata
