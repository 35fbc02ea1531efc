"""Streaming generated text: :class:`TextStreamer`, :class:`TextIteratorStreamer`, :class:`AsyncTextIteratorStreamer`.

A streamer passed to ``generate(streamer=...)`` receives ``put(prompt_ids)``
once, then ``put(new_token_ids)`` after every step, then ``end()``. Text is
released only when it is stable: up to the last whitespace, or everything
after a newline, and never a trailing replacement character (a multi-byte
character still being assembled from byte-level tokens). CJK characters are
released one by one since they need no spaces.

For streaming without threads (and with batches), use
``model.generate_stream(...)``, which yields per-step tokens and text.
"""

from __future__ import annotations

import asyncio
import queue
import sys
from typing import Any, TextIO


class BaseStreamer:
    """Interface of streamers: ``put`` token ids, then ``end``."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class IncrementalDecoder:
    """Turns a growing list of token ids into text increments that will not change later."""

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.decode_kwargs = {"skip_special_tokens": skip_special_tokens, **decode_kwargs}
        self.tokens: list[int] = []
        self.printed = 0

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, **self.decode_kwargs)

    def push(self, tokens: list[int]) -> str:
        """Add tokens; return the newly stable text (maybe empty)."""
        self.tokens.extend(int(t) for t in tokens)
        text = self._text()
        if text.endswith("\n"):
            release = len(text)
        elif text and _is_cjk(text[-1]):
            release = len(text)
        else:
            release = text.rfind(" ") + 1
            if text.endswith("\ufffd"):
                release = min(release, len(text) - 1)
        release = max(release, self.printed)
        chunk = text[self.printed : release]
        self.printed = release
        if text.endswith("\n"):
            self.tokens, self.printed = [], 0
        return chunk

    def flush(self) -> str:
        """Return whatever text is left and reset."""
        chunk = self._text()[self.printed :] if self.tokens else ""
        self.tokens, self.printed = [], 0
        return chunk


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


class TextStreamer(BaseStreamer):
    """Write generated text to ``stream`` (stdout by default) as soon as it is stable.

    ``skip_prompt`` leaves the prompt out; extra keyword arguments go to
    ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``). Batches of one
    row only; use ``generate_stream`` for batches.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, stream: TextIO | None = None, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.stream = stream
        decode_kwargs.setdefault("skip_special_tokens", False)
        self.decoder = IncrementalDecoder(tokenizer, **decode_kwargs)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """Receive token ids ([1, n] or [n]); emit the stable text."""
        if hasattr(value, "dim") and value.dim() > 1:
            if value.shape[0] > 1:
                from bestiary.errors import GenerationError

                raise GenerationError("TextStreamer streams one row; for batches use model.generate_stream(...).")
            value = value[0]
        tokens = value.tolist() if hasattr(value, "tolist") else list(value)
        if self.skip_prompt and not self._prompt_seen:
            self._prompt_seen = True
            return
        self._prompt_seen = True
        text = self.decoder.push(tokens)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        """Emit the remaining text and a final newline."""
        self.on_finalized_text(self.decoder.flush(), stream_end=True)
        self._prompt_seen = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write ``text`` (override to send it elsewhere)."""
        stream = self.stream or sys.stdout
        stream.write(text + ("\n" if stream_end else ""))
        stream.flush()


class TextIteratorStreamer(TextStreamer):
    """Collect text in a thread-safe queue; iterate over it from another thread.

    Run ``generate(..., streamer=streamer)`` in a thread, and ``for text in
    streamer`` in the consumer. ``timeout`` (seconds) bounds each wait.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


class AsyncTextIteratorStreamer(TextStreamer):
    """Like :class:`TextIteratorStreamer`, consumed with ``async for`` inside an event loop.

    Create it inside the running loop; run ``generate`` in a thread
    (``asyncio.to_thread``) and ``async for text in streamer``.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: asyncio.Queue = asyncio.Queue()
        self.stop_signal = None
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.loop.call_soon_threadsafe(self.text_queue.put_nowait, text)
        if stream_end:
            self.loop.call_soon_threadsafe(self.text_queue.put_nowait, self.stop_signal)

    def __aiter__(self) -> "AsyncTextIteratorStreamer":
        return self

    async def __anext__(self) -> str:
        value = await asyncio.wait_for(self.text_queue.get(), self.timeout)
        if value is self.stop_signal:
            raise StopAsyncIteration
        return value


__all__ = ["AsyncTextIteratorStreamer", "BaseStreamer", "IncrementalDecoder", "TextIteratorStreamer", "TextStreamer"]
