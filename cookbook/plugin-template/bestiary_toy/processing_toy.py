"""ToyTokenizer: one id per character (bytes modulo the vocabulary), no files needed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ToyTokenizer:
    """Turns text into character ids; saves and loads a tiny JSON file."""

    file_name = "toy_tokenizer.json"

    def __init__(self, vocab_size: int = 128) -> None:
        self.vocab_size = vocab_size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **_: Any) -> "ToyTokenizer":
        file = Path(path) / cls.file_name
        data = json.loads(file.read_text()) if file.is_file() else {}
        return cls(**data)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.file_name).write_text(json.dumps({"vocab_size": self.vocab_size}))

    def __call__(self, texts: str | list[str], return_tensors: str | None = None) -> dict[str, Any]:
        import torch

        batch = [texts] if isinstance(texts, str) else texts
        ids = [[byte % self.vocab_size for byte in text.encode("utf-8")] or [0] for text in batch]
        width = max(len(row) for row in ids)
        input_ids = [row + [0] * (width - len(row)) for row in ids]
        attention_mask = [[1] * len(row) + [0] * (width - len(row)) for row in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention_mask)}
        return {"input_ids": input_ids, "attention_mask": attention_mask}
