"""The toy-scoring pipeline: text in, label and score out."""

from __future__ import annotations

from typing import Any

from bestiary.pipelines.base import Pipeline


class ToyScoringPipeline(Pipeline):
    """Classify a text with a toy model."""

    task = "toy-scoring"
    needs = ("tokenizer",)

    def preprocess(self, item: str, **_: Any) -> dict[str, Any]:
        return self.tokenizer(item, return_tensors="pt")

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(item["input_ids"].shape[1] for item in items)
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        return {key: torch.cat([pad(item[key]) for item in items]) for key in items[0]}

    def forward(self, batch: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {"logits": self.model(**batch).logits}

    def postprocess(self, output: dict[str, Any], **_: Any) -> dict[str, Any]:
        probabilities = output["logits"][0].softmax(-1)
        best = int(probabilities.argmax())
        return {"label": self.model.config.id2label.get(best, f"LABEL_{best}"), "score": float(probabilities[best])}
