"""``WhisperTokenizer``: Whisper's byte-level BPE with its prompt, language, task and timestamp tokens.

The vocabulary ends with special tokens in a fixed order:
``<|endoftext|>``, ``<|startoftranscript|>``, one token per language
(``<|en|>``, ``<|zh|>``, ...), ``<|translate|>``, ``<|transcribe|>``,
``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>`` (or
``<|nocaptions|>``), ``<|notimestamps|>``, then 1501 timestamp tokens
``<|0.00|>`` ... ``<|30.00|>`` (0.02 s apart).

Encoding text puts the decoder prompt (:attr:`WhisperTokenizer.prefix_tokens`)
before it and ``<|endoftext|>`` after it, for training labels. Decoding can
drop, keep (``decode_with_timestamps``) or turn timestamp tokens into timed
segments (``output_offsets``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from tokenizers import processors

from bestiary.errors import ProcessingError
from bestiary.processing.tokenization import Tokenizer, _to_python
from bestiary_whisper.languages import TASKS, language_code

logger = logging.getLogger(__name__)

START_OF_TRANSCRIPT = "<|startoftranscript|>"
START_OF_PREVIOUS = "<|startofprev|>"
NO_TIMESTAMPS = "<|notimestamps|>"
END_OF_TEXT = "<|endoftext|>"
_TIMESTAMP_TEXT = re.compile(r"<\|(\d+\.\d+)\|>")


class WhisperTokenizer(Tokenizer):
    """Whisper's tokenizer: the core :class:`Tokenizer` plus Whisper's prompt and timestamp handling.

    ``language`` ("fr", "french"), ``task`` ("transcribe" or "translate")
    and ``predict_timestamps`` set the prompt put before encoded text; they
    are saved in ``tokenizer_config.json`` like transformers does.
    """

    transformers_names = ("WhisperTokenizer", "WhisperTokenizerFast")

    def __init__(
        self,
        tokenizer_object: Any = None,
        *,
        language: str | None = None,
        task: str | None = None,
        predict_timestamps: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs["tokenizer_class"] = "WhisperTokenizer"
        for name in ("bos_token", "eos_token", "unk_token"):
            if kwargs.get(name) is None:
                kwargs[name] = END_OF_TEXT
        super().__init__(tokenizer_object, **kwargs)
        self.language = language
        self.task = task
        self.predict_timestamps = bool(predict_timestamps)
        self.set_prefix_tokens()

    # -- prompt ------------------------------------------------------------------------------
    def _required_id(self, token: str) -> int:
        index = self.backend_tokenizer.token_to_id(token)
        if index is None:
            raise ProcessingError(
                f"The vocabulary has no {token} token, which Whisper's prompt needs; this tokenizer.json is not a "
                "Whisper vocabulary."
            )
        return index

    @property
    def timestamp_begin(self) -> int:
        """Id of ``<|0.00|>``, the first timestamp token (right after ``<|notimestamps|>``)."""
        return self._required_id(NO_TIMESTAMPS) + 1

    @property
    def prefix_tokens(self) -> list[int]:
        """The decoder prompt: start of transcript, then language, task and ``<|notimestamps|>`` as configured."""
        prompt = [self._required_id(START_OF_TRANSCRIPT)]
        if self.language is not None:
            prompt.append(self._required_id(f"<|{language_code(self.language)}|>"))
        if self.task is not None:
            if self.task not in TASKS:
                raise ProcessingError(f"task={self.task!r} is not supported; use one of {list(TASKS)}.")
            prompt.append(self._required_id(f"<|{self.task}|>"))
        if not self.predict_timestamps:
            prompt.append(self._required_id(NO_TIMESTAMPS))
        return prompt

    def set_prefix_tokens(
        self, language: str | None = None, task: str | None = None, predict_timestamps: bool | None = None
    ) -> None:
        """Change the prompt put before encoded text (unchanged for arguments left as None)."""
        if language is not None:
            self.language = language
        if task is not None:
            self.task = task
        if predict_timestamps is not None:
            self.predict_timestamps = predict_timestamps
        if self.backend_tokenizer.token_to_id(START_OF_TRANSCRIPT) is None or self.eos_token is None:
            return  # not a full Whisper vocabulary: leave the post-processor alone
        prefix_ids = self.prefix_tokens
        prefix = [self.backend_tokenizer.id_to_token(i) for i in prefix_ids]
        template = " ".join(f"{token}:0" for token in prefix)
        eos = self.eos_token
        self.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{template} $A:0 {eos}:0",
            pair=f"{template} $A:0 $B:1 {eos}:1",
            special_tokens=[(eos, self.eos_token_id), *zip(prefix, prefix_ids)],
        )

    def get_decoder_prompt_ids(
        self, task: str | None = None, language: str | None = None, no_timestamps: bool = True
    ) -> list[tuple[int, int]]:
        """Return ``(position, token)`` pairs of the prompt after the start token (transformers' forced ids)."""
        self.set_prefix_tokens(task=task, language=language, predict_timestamps=not no_timestamps)
        return [(position + 1, token) for position, token in enumerate(self.prefix_tokens[1:])]

    def get_prompt_ids(self, text: str, return_tensors: str | None = "np") -> Any:
        """Return ``<|startofprev|>`` and the tokens of ``text``, to pass as ``generate(prompt_ids=...)``."""
        ids = [self._required_id(START_OF_PREVIOUS)]
        body = self.backend_tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids
        special = set(self.all_special_ids)
        bad = [self.convert_ids_to_tokens(i) for i in body if i in special]
        if bad:
            raise ProcessingError(f"The prompt text contains the special token {bad[0]}, which a prompt may not hold.")
        ids += body
        if return_tensors == "pt":
            import torch

            return torch.tensor(ids)
        if return_tensors == "np":
            import numpy as np

            return np.asarray(ids)
        return ids

    def _tokenizer_config(self) -> dict[str, Any]:
        config = super()._tokenizer_config()
        config.update(language=self.language, task=self.task, predict_timestamps=self.predict_timestamps)
        config["tokenizer_class"] = "WhisperTokenizer"
        return config

    # -- decoding ----------------------------------------------------------------------------
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        *,
        output_offsets: bool = False,
        time_precision: float = 0.02,
        decode_with_timestamps: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Turn token ids into text; a batch gives a list.

        Timestamp tokens are removed from the text unless
        ``decode_with_timestamps`` (then they read ``<|1.08|>``, continuing
        past 30 s when a later window starts again from 0).
        ``skip_special_tokens`` also drops a ``<|startofprev|>`` prompt.
        ``output_offsets=True`` returns ``{"text", "offsets"}`` where offsets
        are the timed segments between timestamp pairs.
        """
        for key in ("normalize", "basic_normalize", "remove_diacritics"):
            if kwargs.pop(key, False):
                raise ProcessingError(f"{key}=True is not supported by bestiary's WhisperTokenizer; normalize the text yourself.")
        if kwargs:
            raise ProcessingError(f"WhisperTokenizer.decode() got unexpected arguments {sorted(kwargs)}.")
        ids = _to_python(token_ids)
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            return [
                self.decode(
                    row,
                    skip_special_tokens,
                    clean_up_tokenization_spaces,
                    output_offsets=output_offsets,
                    time_precision=time_precision,
                    decode_with_timestamps=decode_with_timestamps,
                )
                for row in ids
            ]
        ids = [int(i) for i in ids]
        kept = self._strip_prompt(ids) if skip_special_tokens else ids
        if decode_with_timestamps:
            text = self._decode_with_timestamps(kept, skip_special_tokens, time_precision)
        else:
            text = _TIMESTAMP_TEXT.sub("", super().decode(kept, skip_special_tokens, clean_up_tokenization_spaces))
        if output_offsets:
            return {"text": text, "offsets": self.compute_offsets(ids, time_precision=time_precision)}
        return text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None, **kwargs: Any
    ) -> list[Any]:
        """Decode each sequence of a batch (same options as :meth:`decode`)."""
        rows = _to_python(sequences)
        if isinstance(rows, dict):
            rows = rows["input_ids"]
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces, **kwargs) for row in rows]

    def _strip_prompt(self, ids: list[int]) -> list[int]:
        """Drop a leading ``<|startofprev|>`` prompt up to ``<|startoftranscript|>``."""
        previous = self.backend_tokenizer.token_to_id(START_OF_PREVIOUS)
        if not ids or previous is None or ids[0] != previous:
            return ids
        start = self.backend_tokenizer.token_to_id(START_OF_TRANSCRIPT)
        return ids[ids.index(start) :] if start in ids else []

    def _plain_text(self, ids: list[int], skip_special_tokens: bool) -> str:
        return super().decode(ids, skip_special_tokens) if ids else ""

    def _decode_with_timestamps(self, ids: list[int], skip_special_tokens: bool, time_precision: float) -> str:
        begin = self.timestamp_begin
        pieces: list[Any] = [[]]
        latest = 0.0
        before_latest = 0.0
        shift = 0.0
        for position, token in enumerate(ids):
            if token < begin:
                pieces[-1].append(token)
                continue
            seconds = (token - begin) * time_precision
            if seconds < latest:  # a new window started
                single_ending = position >= 2 and not (ids[position - 1] >= begin and ids[position - 2] >= begin)
                if single_ending:
                    shift += time_precision * 1500
                else:
                    latest = before_latest
                    shift += before_latest
                    pieces = pieces[:-2]
            before_latest = latest
            latest = seconds
            pieces.append(f"<|{seconds + shift:.2f}|>")
            pieces.append([])
        return "".join(
            piece if isinstance(piece, str) else self._plain_text(piece, skip_special_tokens) for piece in pieces
        )

    def compute_offsets(self, token_ids: Sequence[int], time_precision: float = 0.02, segment_size: int = 1500) -> list[dict[str, Any]]:
        """Return the timed segments of a token sequence: ``[{"text", "timestamp": (start, end)}]``.

        Segments lie between timestamp tokens; when timestamps fall back
        (a new 30 s window), later times are shifted to continue.
        """
        ids = [int(i) for i in _to_python(token_ids)]
        begin = self.timestamp_begin
        stamped = [i for i, token in enumerate(ids) if token >= begin]
        cuts = [i + 1 for i in range(len(ids) - 1) if ids[i] >= begin and ids[i + 1] >= begin]
        if not cuts and len(stamped) <= 1:
            return []
        if stamped[-1] + 1 not in cuts:
            cuts.append(stamped[-1] + 1)
        offsets = []
        start = stamped[0]
        latest = 0
        shift = 0
        for cut in cuts:
            piece = ids[start:cut]
            if len(piece) > 1:
                first = piece[0] - begin
                last = piece[-1] - begin
                if first < latest:
                    single_ending = start >= 2 and not (ids[start - 2] >= begin and ids[start - 1] >= begin)
                    shift += segment_size if single_ending else latest
                latest = last
                text = _TIMESTAMP_TEXT.sub("", self._plain_text(piece, False))
                offsets.append(
                    {
                        "text": text,
                        "timestamp": (
                            first * time_precision + shift * time_precision,
                            last * time_precision + shift * time_precision,
                        ),
                    }
                )
            start = cut
        return offsets

    def timestamp_ids(self, time_precision: float = 0.02) -> list[int | None]:
        """Ids of the timestamp tokens ``<|0.00|>`` ... ``<|30.00|>``."""
        return self.convert_tokens_to_ids([f"<|{i * time_precision:.2f}|>" for i in range(1501)])
