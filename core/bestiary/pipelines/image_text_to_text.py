"""``ImageTextToTextPipeline``: answer chat messages that contain images (and videos).

Inputs, as in transformers:

- a chat: a list of ``{"role", "content"}`` messages whose content blocks
  may be ``{"type": "image", "image": <PIL image | array | tensor | path |
  URL>}`` (or ``"url"`` / ``"path"``), ``{"type": "video", "video": <frames>}``
  and ``{"type": "text", "text": ...}``; or a list of chats (a batch);
- ``pipe(images=..., text=...)`` with a prompt that already holds the
  model's image placeholders (one per image), or ``pipe({"images": ...,
  "text": ...})``; a list of such dicts is a batch;
- text alone.

The model's processor renders chats with its chat template (adding the
generation prompt, or continuing a final assistant message), expands the
placeholders and processes the pixels; a batch is processed in one call
with left padding. Results follow transformers: one dict per returned
sequence, ``{"input_text", "generated_text"}``, where ``generated_text`` is
the chat with the new assistant message appended (``return_full_text=True``,
the default), the prompt plus the new text for plain prompts, or only the
new text (``return_full_text=False``); ``return_tensors=True`` gives
``generated_token_ids``. Other keyword arguments are generation settings
(``max_new_tokens``, ``do_sample``, ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines.base import Pipeline

_PREPROCESS = {"continue_final_message", "processor_kwargs", "tools", "documents"}
_POSTPROCESS = {
    "return_full_text", "return_tensors", "skip_special_tokens", "clean_up_tokenization_spaces", "continue_final_message"
}
_FORWARD_RESERVED = {"generate_kwargs", "stop_sequence"}


def is_chat(value: Any) -> bool:
    """Whether ``value`` is one conversation (a list of messages with roles)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


class ImageTextToTextPipeline(Pipeline):
    """Generate text from chat messages with images, with a vision-language model and its processor."""

    task: ClassVar[str] = "image-text-to-text"
    needs: ClassVar[tuple[str, ...]] = ("processor",)

    def __call__(self, images: Any = None, text: Any = None, **params: Any) -> Any:
        """Answer one input or a batch (see the module docstring for the accepted forms)."""
        if images is None and text is None:
            raise ProcessingError("image-text-to-text needs a chat (text=[messages]) or images= and text=.")
        if is_chat(text) or (isinstance(text, (list, tuple)) and text and all(is_chat(chat) for chat in text)):
            if images is not None:
                raise ProcessingError(
                    "Pass images inside the chat messages, not as images=: for example "
                    '{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "..."}]}.'
                )
            return super().__call__(text, **params)
        if text is None and (is_chat(images) or _is_chat_batch(images)):
            return super().__call__(images, **params)
        if text is None and isinstance(images, dict) or (
            text is None and isinstance(images, (list, tuple)) and images and all(isinstance(i, dict) for i in images)
        ):
            return super().__call__(images, **params)
        if text is None:
            raise ProcessingError("image-text-to-text needs text: a prompt with image placeholders, or a chat.")
        if images is None:
            return super().__call__(text, **params)
        if isinstance(text, (list, tuple)):
            image_list = list(images) if isinstance(images, (list, tuple)) else [images]
            if len(image_list) != len(text):
                raise ProcessingError(
                    f"Got {len(text)} prompts and {len(image_list)} images (or image lists); give one per prompt."
                )
            return super().__call__([{"images": im, "text": t} for im, t in zip(image_list, text)], **params)
        return super().__call__({"images": images, "text": text}, **params)

    def is_batch(self, inputs: Any) -> bool:
        if isinstance(inputs, (str, dict)) or is_chat(inputs):
            return False
        return isinstance(inputs, (list, tuple))

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        pre = {k: v for k, v in params.items() if k in _PREPROCESS}
        post = {k: v for k, v in params.items() if k in _POSTPROCESS}
        forward = {k: v for k, v in params.items() if k not in _PREPROCESS | _POSTPROCESS}
        forward.update(forward.pop("generate_kwargs", None) or {})
        stop = forward.pop("stop_sequence", None)
        if stop is not None:
            forward["stop_strings"] = [stop] if isinstance(stop, str) else list(stop)
            forward["tokenizer"] = self.processor.tokenizer
        return pre, forward, post

    # -- the three steps --------------------------------------------------------------
    def preprocess(
        self,
        item: Any,
        continue_final_message: bool | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        tools: Any = None,
        documents: Any = None,
    ) -> dict[str, Any]:
        """Render one input to its prompt text and gather its images and videos (processed per batch)."""
        if is_chat(item):
            messages = [dict(m) for m in item]
            if continue_final_message is None:
                continue_final_message = messages[-1]["role"] == "assistant"
            prompt = self.processor.apply_chat_template(
                messages,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
                tools=tools,
                documents=documents,
            )
            images, videos = _chat_media(messages)
            return _item(prompt, images, videos, messages, processor_kwargs, chat=True)
        if isinstance(item, dict):
            if "text" not in item:
                raise ProcessingError('A dict input needs "text" (and usually "images"): {"images": img, "text": "..."}.')
            images = item.get("images", item.get("image"))
            images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
            return _item(item["text"], images, [], item["text"], processor_kwargs, chat=False)
        if isinstance(item, str):
            return _item(item, [], [], item, processor_kwargs, chat=False)
        raise ProcessingError(
            "image-text-to-text takes a chat (list of {'role', 'content'} messages), a {'images', 'text'} dict, "
            f"a string, or a list of those; got {type(item).__name__}."
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Process the whole batch in one processor call (left padding, pixels concatenated)."""
        prompts = [item["prompt"][0] for item in items]
        images = [image for item in items for image in item["images"][0]]
        videos = [video for item in items for video in item["videos"][0]]
        kwargs = dict(items[0]["processor_kwargs"][0])
        kwargs.setdefault("padding", len(prompts) > 1)
        kwargs.setdefault("padding_side", "left")
        # a rendered chat already holds its special tokens
        kwargs.setdefault("add_special_tokens", not any(item["chat"][0] for item in items))
        if videos:
            kwargs["videos"] = videos
        encoded = self.processor(images=images or None, text=prompts, return_tensors="pt", **kwargs)
        batch = dict(encoded)
        batch["source"] = [item["source"][0] for item in items]
        return batch

    def forward(self, batch: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        """Generate for a processed batch; returns sequences grouped per input."""
        source = batch.pop("source")
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        dtype = getattr(self.model, "dtype", None)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs and dtype is not None and dtype.is_floating_point:
                inputs[key] = inputs[key].to(dtype)
        generation_config = getattr(self.model, "generation_config", None)
        if "pad_token_id" not in generate_kwargs and getattr(generation_config, "pad_token_id", None) is None:
            pad = getattr(self.processor.tokenizer, "pad_token_id", None)
            if pad is not None:
                generate_kwargs["pad_token_id"] = pad
        input_ids = inputs["input_ids"]
        output = self.model.generate(**inputs, **generate_kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        rows = input_ids.shape[0]
        return {
            "sequences": sequences.reshape(rows, sequences.shape[0] // rows, -1),
            "prompt_length": input_ids.shape[1],
            "source": source,
        }

    def postprocess(
        self,
        output: dict[str, Any],
        return_full_text: bool | None = None,
        return_tensors: bool | None = None,
        skip_special_tokens: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
        continue_final_message: bool | None = None,
    ) -> list[dict[str, Any]]:
        """One ``{"input_text", "generated_text"}`` dict per returned sequence (see the module docstring)."""
        sequences = output["sequences"][0]
        prompt_length = output["prompt_length"]
        source = output["source"]
        full = True if return_full_text is None else return_full_text
        records = []
        for sequence in sequences.tolist():
            if return_tensors:
                records.append({"input_text": source, "generated_token_ids": sequence[prompt_length:]})
                continue
            decode_kwargs: dict[str, Any] = {"skip_special_tokens": skip_special_tokens}
            if clean_up_tokenization_spaces is not None:
                decode_kwargs["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
            text: Any = self.processor.tokenizer.decode(sequence[prompt_length:], **decode_kwargs)
            if full:
                if isinstance(source, str):
                    text = source + text
                else:
                    messages = [dict(m) for m in source]
                    continuing = (
                        messages[-1]["role"] == "assistant" if continue_final_message is None else continue_final_message
                    )
                    if continuing:
                        messages[-1] = {**messages[-1], "content": _append_text(messages[-1]["content"], text)}
                        text = messages
                    else:
                        text = messages + [{"role": "assistant", "content": text}]
            records.append({"input_text": source, "generated_text": text})
        return records


def _item(
    prompt: str, images: list[Any], videos: list[Any], source: Any, processor_kwargs: dict[str, Any] | None, *, chat: bool
) -> dict[str, Any]:
    """One preprocessed input (each value wrapped in a one-element list, the batching convention)."""
    return {
        "prompt": [prompt],
        "images": [images],
        "videos": [videos],
        "source": [source],
        "chat": [chat],
        "processor_kwargs": [dict(processor_kwargs or {})],
    }


def _is_chat_batch(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_chat(chat) for chat in value)


def _chat_media(messages: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The images and videos of a chat, in order (the processor reads them again; this only counts and orders)."""
    images, videos = [], []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "image_url" and "image_url" in block:
                url = block["image_url"]
                images.append(url.get("url") if isinstance(url, dict) else url)
            elif kind == "image":
                key = next((k for k in ("image", "url", "path", "base64") if block.get(k) is not None), None)
                if key is None:
                    raise ProcessingError('An {"type": "image"} block carries no image under "image", "url" or "path".')
                value = block[key]
                if key == "base64" and isinstance(value, str) and not value.startswith("data:"):
                    value = _base64_bytes(value)
                images.append(value)
            elif kind == "video":
                value = next((block[k] for k in ("video", "url", "path") if block.get(k) is not None), None)
                if value is None:
                    raise ProcessingError('A {"type": "video"} block carries no video under "video", "url" or "path".')
                videos.append(value)
    return images, videos


def _base64_bytes(value: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ProcessingError(f"An image block's 'base64' value is not valid base64 ({exc}).") from None


def _append_text(content: Any, text: str) -> Any:
    if isinstance(content, str):
        return content + text
    blocks = [dict(block) for block in content]
    if blocks and blocks[-1].get("type") == "text":
        blocks[-1]["text"] = blocks[-1].get("text", "") + text
    else:
        blocks.append({"type": "text", "text": text})
    return blocks


__all__ = ["ImageTextToTextPipeline", "is_chat"]
