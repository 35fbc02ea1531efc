"""Tiny random Qwen2-VL checkpoints for demos and tests (no download, a second to build).

Real Qwen2-VL weights are not reachable offline, so the cookbook and the
tests build a miniature checkpoint folder in transformers' format: a small
byte-level BPE tokenizer trained on a few sentences with Qwen2-VL's special
tokens, Qwen2-VL's chat format, processor settings that keep images small,
and (optionally) a randomly initialised model. Its answers are noise; its
inputs, shapes and file layout are those of the real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Qwen2-VL's special tokens, in the roles its tokenizer gives them.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

#: Qwen2-VL's chat format (ChatML; one vision block per image or video; an optional "Picture n:" label).
CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "Describe this image in one sentence.",
    "What is in the picture? A cat sits on a chair next to the window.",
    "The video shows a dog running in the park, then a ball rolling away.",
    "You are a helpful assistant. Answer briefly and precisely.",
    "Compare the two photos and tell me which one is brighter or darker.",
    "A grey tabby cat with green eyes looks at the camera.",
    "An astronaut in a white suit, a flag, stars and the dark sky behind.",
    "How many objects can you count? There are three cups of coffee.",
)

#: Image and video limits of the tiny checkpoints: 4 to 16 vision tokens per image.
TINY_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}


def build_tokenizer(folder: str | Path, *, vocab_size: int = 320, model_max_length: int = 32768) -> dict[str, int]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``; return the special token ids."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer)
    backend.save(str(folder / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": model_max_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return {token: backend.token_to_id(token) for token in SPECIAL_TOKENS} | {"vocab_size": backend.get_vocab_size()}


def tiny_config_dict(token_ids: dict[str, int], **text_overrides: Any) -> dict[str, Any]:
    """A ``config.json`` dict of a tiny Qwen2-VL (hidden 32, 2+2 layers) matching the tokenizer's ids."""
    text = {
        "vocab_size": token_ids["vocab_size"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        "bos_token_id": None,
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
        **text_overrides,
    }
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": text["hidden_size"], "num_heads": 4, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    return {
        "model_type": "qwen2_vl",
        "text_config": text,
        "vision_config": vision,
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
    }


def build_processor(folder: str | Path) -> Any:
    """Write a tiny processor folder (tokenizer, chat template, processor_config.json) and return the processor."""
    from bestiary.processing.tokenization import Tokenizer
    from bestiary_qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from bestiary_qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
    from bestiary_qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    folder = Path(folder)
    build_tokenizer(folder)
    processor = Qwen2VLProcessor(
        Qwen2VLImageProcessor(**TINY_PIXELS),
        Tokenizer.from_pretrained(folder),
        Qwen2VLVideoProcessor(**TINY_PIXELS),
    )
    processor.save_pretrained(folder)
    return processor


def build_tiny_checkpoint(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a complete tiny random Qwen2-VL folder (model, tokenizer, processor) with bestiary; return it."""
    import torch

    from bestiary_qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
    from bestiary_qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

    folder = Path(folder)
    build_processor(folder)
    ids = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = ids["model"]["vocab"]
    token_ids = {token: vocab[token] for token in SPECIAL_TOKENS} | {"vocab_size": len(vocab)}
    config = Qwen2VLConfig.from_dict(tiny_config_dict(token_ids))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration.from_config(config).eval()
    model.save_pretrained(folder)
    return folder
