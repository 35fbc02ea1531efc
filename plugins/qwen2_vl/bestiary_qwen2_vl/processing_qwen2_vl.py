"""``Qwen2VLProcessor``: chat messages with images and videos in, model inputs out.

It joins a tokenizer, a :class:`Qwen2VLImageProcessor` and a
:class:`Qwen2VLVideoProcessor`. The chat template writes one
``<|image_pad|>`` (or ``<|video_pad|>``) per image (video); the processor
expands each to exactly as many placeholders as the item yields vision
tokens (its grid's patches / ``merge_size**2``), so that the model writes
one vision token over each. Truncation never cuts inside (or drops) a run
of placeholders: such an input is refused before tokenization with an
error naming the item and the token counts.

Files are transformers' own: ``processor_config.json`` (image and video
settings nested), the tokenizer files, and ``chat_template.jinja``; older
folders with only ``preprocessor_config.json`` (and ``chat_template.json``)
load too.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from bestiary.errors import HubError, ProcessingError
from bestiary.processing.base import PROCESSOR_CONFIG_NAME, atomic_write_text
from bestiary.processing.batch_feature import BatchFeature
from bestiary.processing.tokenization import CHAT_TEMPLATE_FILE, Tokenizer
from bestiary_qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from bestiary_qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_TOKEN = "<|image_pad|>"
DEFAULT_VIDEO_TOKEN = "<|video_pad|>"
_TOKENIZER_CALL_ARGS = frozenset(inspect.signature(Tokenizer.__call__).parameters) - {"self", "text", "text_pair"}
_HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
_CALL_ARGS = _TOKENIZER_CALL_ARGS | {
    "return_mm_token_type_ids", "images_kwargs", "videos_kwargs", "text_kwargs", "video_fps"
}
_CONTENT_KEYS = {"image": ("image", "url", "path", "base64"), "video": ("video", "url", "path")}


class Qwen2VLProcessor:
    """Tokenizer + image processor + video processor of Qwen2-VL (see the module docstring)."""

    transformers_class = "Qwen2VLProcessor"
    attributes = ("image_processor", "tokenizer", "video_processor")

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessor | None = None,
        tokenizer: Tokenizer | None = None,
        video_processor: Qwen2VLVideoProcessor | None = None,
        chat_template: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise ProcessingError(
                "Qwen2VLProcessor needs a tokenizer (tokenizer=Tokenizer.from_pretrained(folder)); "
                "or load everything with Qwen2VLProcessor.from_pretrained(folder)."
            )
        self.tokenizer = tokenizer
        self.image_processor = image_processor if image_processor is not None else Qwen2VLImageProcessor()
        self.video_processor = video_processor if video_processor is not None else Qwen2VLVideoProcessor()
        self.image_token = getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or DEFAULT_VIDEO_TOKEN
        self.image_token_id = self._token_id(self.image_token, "image")
        self.video_token_id = self._token_id(self.video_token, "video")
        self.chat_template = chat_template if chat_template is not None else tokenizer.chat_template

    def _token_id(self, token: str, kind: str) -> int:
        index = self.tokenizer.get_vocab().get(token)
        if index is None:
            raise ProcessingError(
                f"The tokenizer has no {kind} placeholder token {token!r}. Add it "
                f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})) or use the tokenizer "
                "saved with the model."
            )
        return index

    # -- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs: Any) -> "Qwen2VLProcessor":
        """Load the tokenizer, image and video settings and chat template of a folder or hub repo.

        Hub options apply to every file. Other keyword arguments set image /
        video processor settings (``min_pixels=``, ``max_pixels=``, ``size=``,
        ...; a setting both have goes to both) or tokenizer settings
        (``padding_side=``, ...).
        """
        hub = {key: kwargs.pop(key) for key in list(kwargs) if key in _HUB_KEYS}
        for key in ("trust_remote_code", "use_fast", "force_download", "proxies", "_from_auto"):
            kwargs.pop(key, None)
        chat_template = kwargs.pop("chat_template", None)
        image_settings = _settings_for(Qwen2VLImageProcessor, kwargs)
        video_settings = _settings_for(Qwen2VLVideoProcessor, kwargs)
        tokenizer_settings = {k: v for k, v in kwargs.items() if k not in image_settings and k not in video_settings}
        tokenizer = Tokenizer.from_pretrained(path_or_repo, **hub, **tokenizer_settings)
        image_processor = Qwen2VLImageProcessor.from_pretrained(path_or_repo, **hub, **image_settings)
        try:
            video_processor = Qwen2VLVideoProcessor.from_pretrained(path_or_repo, **hub, **video_settings)
        except HubError:
            logger.info("No video processor settings in %s; using the defaults.", path_or_repo)
            video_processor = Qwen2VLVideoProcessor(**video_settings)
        return cls(image_processor, tokenizer, video_processor, chat_template=chat_template)

    def to_dict(self) -> dict[str, Any]:
        """Return ``processor_config.json`` as transformers writes it."""
        return {
            "image_processor": self.image_processor.to_dict(),
            "processor_class": self.transformers_class,
            "video_processor": self.video_processor.to_dict(),
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[Path]:
        """Write ``processor_config.json``, the tokenizer files and ``chat_template.jinja``; return the paths."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [Path(path) for path in self.tokenizer.save_pretrained(directory)]
        if isinstance(self.chat_template, str) and self.chat_template != self.tokenizer.chat_template:
            atomic_write_text(directory / CHAT_TEMPLATE_FILE, self.chat_template)
            written.append(directory / CHAT_TEMPLATE_FILE)
        path = directory / PROCESSOR_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        written.append(path)
        return written

    def __repr__(self) -> str:
        return (
            f"Qwen2VLProcessor(image_processor={self.image_processor!r}, video_processor={self.video_processor!r}, "
            f"tokenizer={self.tokenizer!r})"
        )

    @property
    def model_input_names(self) -> list[str]:
        """Names of the model inputs this processor produces."""
        names = list(self.tokenizer.model_input_names) + ["mm_token_type_ids"]
        names += list(self.image_processor.model_input_names) + list(self.video_processor.model_input_names)
        return names

    # -- calling -----------------------------------------------------------------------
    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        videos: Any = None,
        *,
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_mm_token_type_ids: bool = True,
        images_kwargs: Mapping[str, Any] | None = None,
        videos_kwargs: Mapping[str, Any] | None = None,
        text_kwargs: Mapping[str, Any] | None = None,
        video_fps: float | list[float] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize ``text`` with its placeholders expanded, and process ``images`` and ``videos``.

        ``text`` holds one ``image_token`` per image and one ``video_token``
        per video, in the order the items are given (across the batch).
        Other keyword arguments go to the image / video processors when they
        name one of their settings (``min_pixels``, ``num_frames``, ...), else
        to the tokenizer (``padding_side``, ``add_special_tokens``, ...).
        Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``
        (0 text, 1 image, 2 video), ``pixel_values`` / ``image_grid_thw`` and
        ``pixel_values_videos`` / ``video_grid_thw``.
        """
        image_kwargs, video_kwargs, tokenizer_kwargs = self._route_kwargs(kwargs, images_kwargs, videos_kwargs, text_kwargs)
        if images is None and text is None and videos is None:
            raise ProcessingError("Qwen2VLProcessor needs text=, images= or videos=.")
        data: dict[str, Any] = {}
        image_tokens: list[int] = []
        video_tokens: list[int] = []
        if images is not None:
            processed = self.image_processor(images, **image_kwargs)
            data.update(processed)
            image_tokens = self._token_counts(processed["image_grid_thw"], self.image_processor.merge_size)
        if videos is not None:
            processed = self.video_processor(videos, video_fps=video_fps, **video_kwargs)
            data.update(processed)
            video_tokens = self._token_counts(processed["video_grid_thw"], self.video_processor.merge_size)
        if text is None:
            return BatchFeature(data, tensor_type=return_tensors)
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(sample, str) for sample in texts):
            raise ProcessingError("text must be a string or a list of strings.")
        self._check_placeholder_counts(texts, len(image_tokens), len(video_tokens), images is not None, videos is not None)
        expanded = self.expand_placeholders(texts, image_tokens, video_tokens)
        if truncation not in (None, False, "do_not_truncate"):
            self._check_truncation(expanded, image_tokens, video_tokens, truncation, max_length, tokenizer_kwargs)
        encoded = self.tokenizer(
            expanded, padding=padding, truncation=truncation, max_length=max_length, **tokenizer_kwargs
        )
        text_data = dict(encoded)
        if return_mm_token_type_ids:
            text_data["mm_token_type_ids"] = [
                [1 if token == self.image_token_id else 2 if token == self.video_token_id else 0 for token in ids]
                for ids in text_data["input_ids"]
            ]
        return BatchFeature({**text_data, **data}, tensor_type=return_tensors)

    def _route_kwargs(
        self,
        kwargs: dict[str, Any],
        images_kwargs: Mapping[str, Any] | None,
        videos_kwargs: Mapping[str, Any] | None,
        text_kwargs: Mapping[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        image_kwargs = dict(images_kwargs or {})
        video_kwargs = dict(videos_kwargs or {})
        tokenizer_kwargs = dict(text_kwargs or {})
        unknown = []
        for key, value in kwargs.items():
            routed = False
            if _is_setting(self.image_processor, key):
                image_kwargs.setdefault(key, value)
                routed = True
            if _is_setting(self.video_processor, key):
                video_kwargs.setdefault(key, value)
                routed = True
            if key in _TOKENIZER_CALL_ARGS:
                tokenizer_kwargs.setdefault(key, value)
                routed = True
            if not routed:
                unknown.append(key)
        if unknown:
            raise ProcessingError(
                f"Qwen2VLProcessor got arguments it cannot place: {sorted(unknown)}. They must be image / video "
                "processor settings or tokenizer arguments."
            )
        return image_kwargs, video_kwargs, tokenizer_kwargs

    @staticmethod
    def _token_counts(grids: Any, merge_size: int) -> list[int]:
        return [int(t) * int(h) * int(w) // merge_size**2 for t, h, w in grids.tolist()]

    def _check_placeholder_counts(
        self, texts: list[str], num_images: int, num_videos: int, has_images: bool, has_videos: bool
    ) -> None:
        for token, count, kind in ((self.image_token, num_images, "image"), (self.video_token, num_videos, "video")):
            per_sample = [sample.count(token) for sample in texts]
            found = sum(per_sample)
            if found != count:
                given = f"{count} {kind}{'s' if count != 1 else ''}"
                raise ProcessingError(
                    f"The text holds {found} {kind} placeholder{'s' if found != 1 else ''} {token!r} "
                    f"(per sample: {per_sample}) but {given} {'was' if count == 1 else 'were'} given. Put exactly one "
                    f"{token!r} in the text per {kind}, in order; apply_chat_template() writes them for messages "
                    f'with {{"type": "{kind}"}} content.'
                )

    def expand_placeholders(self, texts: list[str], image_tokens: list[int], video_tokens: list[int]) -> list[str]:
        """Replace the n-th image (video) placeholder of the batch by ``image_tokens[n]`` copies of it."""
        counts = {self.image_token: iter(image_tokens), self.video_token: iter(video_tokens)}
        expanded = []
        for sample in texts:
            pieces, position = [], 0
            while True:
                found = [(sample.find(token, position), token) for token in counts if token in sample[position:]]
                if not found:
                    break
                start, token = min(found)
                pieces.append(sample[position:start])
                pieces.append(token * next(counts[token]))
                position = start + len(token)
            pieces.append(sample[position:])
            expanded.append("".join(pieces))
        return expanded

    def _check_truncation(
        self,
        texts: list[str],
        image_tokens: list[int],
        video_tokens: list[int],
        truncation: bool | str,
        max_length: int | None,
        tokenizer_kwargs: dict[str, Any],
    ) -> None:
        """Refuse a truncation that would drop any vision placeholder (naming the item and the counts)."""
        limit = max_length
        if limit is None:
            model_max = self.tokenizer.model_max_length
            if model_max is None or model_max > 10**20:
                return
            limit = model_max
        probe = {k: v for k, v in tokenizer_kwargs.items() if k in ("add_special_tokens", "split_special_tokens")}
        ids_per_sample = self.tokenizer(texts, truncation=False, padding=False, **probe)["input_ids"]
        side = self.tokenizer.truncation_side
        items = iter([("image", n + 1, count) for n, count in enumerate(image_tokens)])
        videos = iter([("video", n + 1, count) for n, count in enumerate(video_tokens)])
        for sample, ids in enumerate(ids_per_sample):
            runs = _placeholder_runs(ids, self.image_token_id, self.video_token_id)
            # map each run to the items it holds (runs may hold back-to-back items)
            spans = []
            for kind, start, length in runs:
                source = items if kind == "image" else videos
                offset = start
                while offset < start + length:
                    name, number, count = next(source)
                    spans.append((name, number, count, offset, offset + count))
                    offset += count
            if len(ids) <= limit:
                continue
            cut = (limit, len(ids)) if side == "right" else (0, len(ids) - limit)
            for name, number, count, begin, end in spans:
                if begin < cut[1] and end > cut[0]:
                    raise ProcessingError(
                        f"Sample {sample} is {len(ids)} tokens long, more than max_length={limit}, and truncating it "
                        f"({side} side) would cut {name} {number}, whose {count} vision tokens sit at positions "
                        f"{begin}-{end - 1}. Raise max_length, shrink the {name} (lower max_pixels), shorten the text, "
                        "or turn truncation off."
                    )

    # -- chat ------------------------------------------------------------------------
    def apply_chat_template(
        self,
        conversation: Any,
        chat_template: str | None = None,
        *,
        tools: Sequence[Any] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = False,
        return_tensors: str | None = None,
        return_dict: bool = False,
        processor_kwargs: Mapping[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> Any:
        """Render chat messages (one conversation or a batch) and, with ``tokenize=True``, process them.

        Message content may be a string or a list of blocks:
        ``{"type": "text", "text": ...}``, ``{"type": "image", "image": <PIL
        image, array, tensor, path or URL>}`` (or ``"url"`` / ``"path"`` /
        ``"base64"``; OpenAI's ``{"type": "image_url", "image_url": {"url":
        ...}}`` works too), ``{"type": "video", "video": <frames>}``. Returns the
        prompt text (``tokenize=False``), the token ids, or every model input
        (``return_dict=True``). Extra keyword arguments are template variables
        (``add_vision_id=True`` numbers the pictures).
        """
        from bestiary.processing.chat_template import render_chat_template, split_conversations

        template = chat_template if chat_template is not None else self.chat_template
        if isinstance(template, dict):
            template = template.get(chat_template or "default")
        if not template:
            raise ProcessingError(
                "This processor has no chat template (no chat_template.jinja next to the tokenizer). Pass "
                "chat_template='...' or set processor.chat_template."
            )
        kwargs = dict(processor_kwargs or {})
        for key in list(template_kwargs):  # processor arguments given loose (as transformers tolerates)
            if key in _CALL_ARGS or _is_setting(self.image_processor, key) or _is_setting(self.video_processor, key):
                kwargs.setdefault(key, template_kwargs.pop(key))
        conversations, batched = split_conversations(conversation)
        conversations = [_normalise_content(chat) for chat in conversations]
        rendered = render_chat_template(
            template,
            conversations,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **{**self.tokenizer.special_tokens_map, **template_kwargs},
        )
        if not tokenize:
            return rendered if batched else rendered[0]
        images = [item for chat in conversations for item in _content_items(chat, "image")]
        videos = [item for chat in conversations for item in _content_items(chat, "video")]
        kwargs.setdefault("add_special_tokens", False)  # the template wrote the special tokens
        outputs = self(
            images=images or None,
            text=rendered if batched else rendered[0],
            videos=videos or None,
            return_tensors=return_tensors,
            **kwargs,
        )
        return outputs if return_dict else outputs["input_ids"]

    # -- decoding --------------------------------------------------------------------
    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(
        self, generated_outputs: Any, skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False
    ) -> list[str]:
        """Decode generated token ids [batch, length] to texts."""
        return self.tokenizer.batch_decode(
            generated_outputs,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )


# -- helpers ----------------------------------------------------------------------------
def _is_setting(processor: Qwen2VLImageProcessor, key: str) -> bool:
    return key in type(processor).model_fields or key in ("min_pixels", "max_pixels")


def _settings_for(cls: type[Qwen2VLImageProcessor], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key in cls.model_fields or key in ("min_pixels", "max_pixels")}


def _placeholder_runs(ids: Sequence[int], image_id: int, video_id: int) -> list[tuple[str, int, int]]:
    """(kind, start, length) of every run of image or video placeholder ids."""
    runs: list[tuple[str, int, int]] = []
    index = 0
    while index < len(ids):
        token = ids[index]
        if token in (image_id, video_id):
            start = index
            while index < len(ids) and ids[index] == token:
                index += 1
            runs.append(("image" if token == image_id else "video", start, index - start))
        else:
            index += 1
    return runs


def _normalise_content(chat: Sequence[Any]) -> list[dict[str, Any]]:
    """Copy messages, turning OpenAI ``image_url`` blocks into ``{"type": "image", "url": ...}`` ones."""
    messages = []
    for message in chat:
        if not isinstance(message, Mapping):
            raise ProcessingError(f"Chat messages must be dicts with 'role' and 'content', got {message!r}.")
        message = dict(message)
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            blocks = []
            for block in content:
                if isinstance(block, Mapping) and block.get("type") == "image_url" and "image_url" in block:
                    url = block["image_url"]
                    url = url.get("url", "") if isinstance(url, Mapping) else url
                    block = {"type": "image", "url": url}
                blocks.append(dict(block) if isinstance(block, Mapping) else block)
            message["content"] = blocks
        messages.append(message)
    return messages


def _content_items(chat: list[dict[str, Any]], kind: str) -> list[Any]:
    """Every image (or video) of a conversation, in order of appearance."""
    items = []
    for message in chat:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, Mapping) or block.get("type") != kind:
                continue
            values = [block[key] for key in _CONTENT_KEYS[kind] if key in block and block[key] is not None]
            if not values:
                raise ProcessingError(
                    f'A {{"type": "{kind}"}} block carries no {kind}; give it under one of {list(_CONTENT_KEYS[kind])}.'
                )
            value = values[0]
            if kind == "image" and "base64" in block and value is block["base64"]:
                value = _decode_base64(value)
            items.append(value)
    return items


def _decode_base64(value: str | bytes) -> bytes | str:
    if isinstance(value, str) and value.startswith("data:"):
        return value
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ProcessingError(f"An image block's 'base64' value is not valid base64 ({exc}).") from None


__all__ = ["Qwen2VLProcessor"]
