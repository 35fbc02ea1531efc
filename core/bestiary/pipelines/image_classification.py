"""The "image-classification" pipeline: the top-k labels of an image, with scores.

Scores are a softmax over the logits for single-label models, a sigmoid for
one-label and multi-label models, and the raw logits for regression
(``function_to_apply`` overrides the choice), as in transformers. An image
gives a list of ``{"label", "score"}`` sorted by score, the ``top_k`` best
(5 by default, at most the number of labels); a list of images gives one
such list per image. Images are processed ``batch_size`` at a time, with a
progress bar over many inputs.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar


from bestiary.errors import ProcessingError
from bestiary.pipelines._image_inputs import image_to_model_inputs
from bestiary.pipelines._scores import scores_from_logits, top_labels
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)

FUNCTIONS = ("softmax", "sigmoid", "none")
DEFAULT_TOP_K = 5


class ImageClassificationPipeline(Pipeline):
    """Classify images with an image-classification model.

    Call arguments: ``top_k`` (int; None for every label),
    ``function_to_apply`` ("softmax", "sigmoid", "none"), ``timeout`` (seconds,
    for URLs) and ``image_processor_kwargs`` (settings for this call only).
    """

    task: ClassVar[str] = "image-classification"
    needs: ClassVar[tuple[str, ...]] = ("image_processor",)

    def __call__(self, inputs: Any = None, **params: Any) -> Any:
        """Classify one image or a list of images (``images=`` is accepted too)."""
        if inputs is None:
            inputs = params.pop("images", None)
        if inputs is None:
            raise ProcessingError("image-classification needs an image or a list of images as its first argument.")
        return super().__call__(inputs, **params)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Check the arguments once per call and route them to the three steps."""
        unknown = set(params) - {"top_k", "function_to_apply", "timeout", "image_processor_kwargs"}
        if unknown:
            raise TypeError(
                f"image-classification got unknown arguments {sorted(unknown)}; it takes top_k, "
                "function_to_apply, timeout and image_processor_kwargs."
            )
        top_k = params.get("top_k", DEFAULT_TOP_K)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ProcessingError(f"top_k must be a positive integer or None (every label), got {top_k!r}.")
        function = params.get("function_to_apply")
        if function is not None:
            function = str(getattr(function, "value", function)).lower()
            if function not in FUNCTIONS:
                raise ProcessingError(f"function_to_apply={function!r} is not valid; use one of {', '.join(FUNCTIONS)}.")
        pre = {"timeout": params.get("timeout"), "image_processor_kwargs": params.get("image_processor_kwargs")}
        return pre, {}, {"top_k": top_k, "function_to_apply": function}

    def preprocess(
        self, item: Any, timeout: float | None = None, image_processor_kwargs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Load and process one image into ``pixel_values``."""
        return image_to_model_inputs(
            self.image_processor, self.model, item, timeout=timeout, image_processor_kwargs=image_processor_kwargs
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the classifier on a batch of images."""
        return {"logits": self.model(pixel_values=batch["pixel_values"]).logits}

    def postprocess(
        self, output: dict[str, Any], top_k: int | None = DEFAULT_TOP_K, function_to_apply: str | None = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best labels with their scores, best first."""
        scores = scores_from_logits(output["logits"][0], self.model.config, function_to_apply)
        return top_labels(scores, self.model.config, top_k)


__all__ = ["ImageClassificationPipeline"]
