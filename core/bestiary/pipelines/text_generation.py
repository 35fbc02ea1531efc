"""``TextGenerationPipeline``: continue a text, or answer chat messages.

Inputs: a string, a chat (a list of ``{"role", "content"}`` messages), or a
list of either. A chat goes through the tokenizer's chat template with the
generation prompt appended (or, when the last message is the assistant's,
continued in place). Batches are left-padded so every row matches its
unbatched result.

Outputs follow transformers: a list with one dict per returned sequence,
``{"generated_text": ...}`` where the value is the prompt plus the new text
(``return_full_text=True``, the default), only the new text
(``return_full_text=False``), or, for chats, the messages with the new
assistant message appended. ``return_tensors=True`` gives
``{"generated_token_ids": [...]}`` instead. Every other keyword argument is a
generation setting passed to ``model.generate``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines.base import Pipeline

_PREPROCESS = {"prefix", "add_special_tokens", "continue_final_message", "tools", "documents", "truncation", "tokenizer_encode_kwargs"}
_POSTPROCESS = {"return_full_text", "return_text", "return_tensors", "clean_up_tokenization_spaces", "skip_special_tokens", "continue_final_message"}


def is_chat(value: Any) -> bool:
    """Whether ``value`` is one conversation (a list of messages with roles)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


class TextGenerationPipeline(Pipeline):
    """Generate text from a prompt or chat messages with a causal language model."""

    task: ClassVar[str] = "text-generation"
    needs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def is_batch(self, inputs: Any) -> bool:
        if isinstance(inputs, str) or is_chat(inputs):
            return False
        return isinstance(inputs, (list, tuple))

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        pre = {k: v for k, v in params.items() if k in _PREPROCESS}
        post = {k: v for k, v in params.items() if k in _POSTPROCESS}
        forward = {k: v for k, v in params.items() if k not in _PREPROCESS | _POSTPROCESS}
        return pre, forward, post

    # -- the three steps --------------------------------------------------------------
    def preprocess(
        self,
        item: Any,
        prefix: str = "",
        add_special_tokens: bool | None = None,
        continue_final_message: bool | None = None,
        tools: Any = None,
        documents: Any = None,
        truncation: bool | None = None,
        tokenizer_encode_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Tokenize one prompt (a chat goes through the chat template)."""
        kwargs = dict(tokenizer_encode_kwargs or {})
        if truncation is not None:
            kwargs["truncation"] = truncation
        if is_chat(item):
            messages = [dict(m) for m in item]
            if continue_final_message is None:
                continue_final_message = messages[-1]["role"] == "assistant"
            encoded = self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
                tools=tools,
                documents=documents,
                return_dict=True,
                return_tensors="pt",
                tokenizer_kwargs=kwargs or None,
            )
            prompt: Any = messages
        elif isinstance(item, str):
            if add_special_tokens is not None:
                kwargs["add_special_tokens"] = add_special_tokens
            encoded = self.tokenizer(prefix + item, return_tensors="pt", **kwargs)
            prompt = item
        else:
            raise ProcessingError(
                f"text-generation takes a string, a chat (list of {{'role', 'content'}} messages) or a list of those; "
                f"got {type(item).__name__}."
            )
        input_ids = encoded["input_ids"]
        mask = encoded.get("attention_mask") if hasattr(encoded, "get") else None
        if mask is None:
            mask = torch.ones_like(input_ids)
        return {"input_ids": input_ids, "attention_mask": mask, "prompt": [prompt]}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad the prompts of a batch."""
        length = max(item["input_ids"].shape[1] for item in items)
        pad = self._pad_token_id()
        ids, masks = [], []
        for item in items:
            missing = length - item["input_ids"].shape[1]
            ids.append(torch.nn.functional.pad(item["input_ids"], (missing, 0), value=pad))
            masks.append(torch.nn.functional.pad(item["attention_mask"], (missing, 0), value=0))
        return {
            "input_ids": torch.cat(ids),
            "attention_mask": torch.cat(masks),
            "prompt": [item["prompt"][0] for item in items],
        }

    def _pad_token_id(self) -> int:
        for candidate in (
            getattr(self.tokenizer, "pad_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "pad_token_id", None),
        ):
            if candidate is not None:
                return int(candidate)
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_ids", None) or []
        if eos:
            return int(eos[0])
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        return int(eos_id) if eos_id is not None else 0

    def forward(self, batch: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        """Generate for a padded batch; returns sequences grouped per prompt."""
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        rows = input_ids.shape[0]
        if "pad_token_id" not in generate_kwargs and getattr(self.model.generation_config, "pad_token_id", None) is None:
            generate_kwargs["pad_token_id"] = self._pad_token_id()
        if input_ids.shape[1] == 0:
            output = self.model.generate(**generate_kwargs)
        else:
            output = self.model.generate(input_ids, attention_mask=mask, **generate_kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        per_prompt = sequences.shape[0] // rows
        return {
            "sequences": sequences.reshape(rows, per_prompt, -1),
            "prompt_length": input_ids.shape[1],
            "prompt": batch["prompt"],
        }

    def postprocess(
        self,
        output: dict[str, Any],
        return_full_text: bool | None = None,
        return_text: bool | None = None,
        return_tensors: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        skip_special_tokens: bool = True,
        continue_final_message: bool | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per returned sequence (see the module docstring)."""
        sequences = output["sequences"][0]
        prompt_length = output["prompt_length"]
        prompt = output["prompt"]
        full = True if return_full_text is None else return_full_text
        records = []
        for sequence in sequences.tolist():
            if return_tensors:
                records.append({"generated_token_ids": sequence})
                continue
            decode_kwargs = {"skip_special_tokens": skip_special_tokens}
            if clean_up_tokenization_spaces is not None:
                decode_kwargs["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
            text = self.tokenizer.decode(sequence[prompt_length:], **decode_kwargs)
            if full:
                if isinstance(prompt, str):
                    text = prompt + text
                else:
                    messages = [dict(m) for m in prompt]
                    continuing = messages[-1]["role"] == "assistant" if continue_final_message is None else continue_final_message
                    if continuing:
                        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + text}
                        text = messages
                    else:
                        text = messages + [{"role": "assistant", "content": text}]
            records.append({"generated_text": text})
        return records


__all__ = ["TextGenerationPipeline", "is_chat"]
