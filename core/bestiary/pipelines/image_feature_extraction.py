"""The "image-feature-extraction" pipeline: per-token features or one pooled vector per image.

With a base model (``AutoModel``: Swin, ViT, ...), ``pool=False`` (the
default) returns the last hidden state as transformers does, a nested list
``[1][tokens][hidden]``; ``pool=True`` returns the model's pooled output
``[1][hidden]``. With a backbone (``AutoBackbone``), the tokens are the
positions of the last selected feature map (``[1][height * width][channels]``)
and pooling averages them. ``return_tensors=True`` gives tensors instead of
lists. Images are processed ``batch_size`` at a time, with a progress bar
over many inputs.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from bestiary.errors import ProcessingError
from bestiary.pipelines._image_inputs import image_to_model_inputs
from bestiary.pipelines.base import Pipeline

logger = logging.getLogger(__name__)


class ImageFeatureExtractionPipeline(Pipeline):
    """Extract image features with a base model or a backbone.

    Call arguments: ``pool`` (bool), ``return_tensors`` (bool), ``timeout``
    (seconds, for URLs) and ``image_processor_kwargs`` (settings for this call only).
    """

    task: ClassVar[str] = "image-feature-extraction"
    needs: ClassVar[tuple[str, ...]] = ("image_processor",)

    def __call__(self, inputs: Any = None, **params: Any) -> Any:
        """Extract features of one image or a list of images (``images=`` is accepted too)."""
        if inputs is None:
            inputs = params.pop("images", None)
        if inputs is None:
            raise ProcessingError("image-feature-extraction needs an image or a list of images as its first argument.")
        return super().__call__(inputs, **params)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Check the arguments once per call and route them to the three steps."""
        unknown = set(params) - {"pool", "return_tensors", "timeout", "image_processor_kwargs"}
        if unknown:
            raise TypeError(
                f"image-feature-extraction got unknown arguments {sorted(unknown)}; it takes pool, return_tensors, "
                "timeout and image_processor_kwargs."
            )
        pre = {"timeout": params.get("timeout"), "image_processor_kwargs": params.get("image_processor_kwargs")}
        post = {"return_tensors": bool(params.get("return_tensors", False))}
        return pre, {"pool": bool(params.get("pool", False))}, post

    def preprocess(
        self, item: Any, timeout: float | None = None, image_processor_kwargs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Load and process one image into ``pixel_values``."""
        return image_to_model_inputs(
            self.image_processor, self.model, item, timeout=timeout, image_processor_kwargs=image_processor_kwargs
        )

    def forward(self, batch: dict[str, Any], pool: bool = False) -> dict[str, Any]:
        """Run the model; keep the pooled vector or the token features of each image."""
        output = self.model(pixel_values=batch["pixel_values"])
        feature_maps = _get(output, "feature_maps")
        if feature_maps is not None:  # a backbone: tokens are the positions of the last selected map
            tokens = feature_maps[-1].flatten(2).transpose(1, 2)
            return {"features": tokens.mean(dim=1) if pool else tokens}
        if pool:
            pooled = _get(output, "pooler_output")
            if pooled is None:
                raise ProcessingError(
                    f"{type(self.model).__name__} returns no pooled output; call with pool=False for per-token "
                    "features, or load a model with a pooling layer."
                )
            return {"features": pooled}
        hidden = _get(output, "last_hidden_state")
        if hidden is None:
            hidden = output[0]
        return {"features": hidden}

    def postprocess(self, output: dict[str, Any], return_tensors: bool = False) -> Any:
        """The features of one image, with a leading batch dimension of 1, as a tensor or nested lists."""
        features: torch.Tensor = output["features"]
        return features if return_tensors else features.float().tolist()


def _get(output: Any, name: str) -> Any:
    if isinstance(output, dict):
        return output.get(name)
    return getattr(output, name, None)


__all__ = ["ImageFeatureExtractionPipeline"]
