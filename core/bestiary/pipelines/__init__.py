"""``pipeline()``: build a task pipeline from a model name, folder or object.

Pipeline tasks are registered like architectures: the core's own tasks come
through the core's entry point (``bestiary.pipelines.builtin``), plugins add
theirs with the ``bestiary_pipelines`` hook.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bestiary.errors import NotRegisteredError

logger = logging.getLogger(__name__)

_PROCESSOR_LOADERS = {
    "tokenizer": "AutoTokenizer",
    "image_processor": "AutoImageProcessor",
    "feature_extractor": "AutoFeatureExtractor",
    "processor": "AutoProcessor",
}


def pipeline(
    task: str,
    model: Any = None,
    *,
    tokenizer: Any = None,
    image_processor: Any = None,
    feature_extractor: Any = None,
    processor: Any = None,
    device: Any = None,
    dtype: Any = "auto",
    model_kwargs: dict[str, Any] | None = None,
    **pipeline_kwargs: Any,
):
    """Return the pipeline registered for ``task``, loading ``model`` and its processors as needed.

    ``model`` may be a loaded model, a local folder or a hub repo id; when it
    is None the task's default checkpoint from the catalog is used.
    """
    from bestiary.registry import get_registry

    registry = get_registry()
    registration = registry.pipeline_spec(task)
    spec = registration.spec
    pipeline_class = registry.resolve(spec.pipeline)
    if model is None:
        if not spec.default_model:
            raise ValueError(f"The {task!r} pipeline has no default model; pass model= (a folder, repo id or model).")
        model = spec.default_model
    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", None)
    if isinstance(model, (str, os.PathLike)):
        model = _load_model(model, spec.model_tasks, dtype=dtype, device=device, **(model_kwargs or {}))
        device = None
    processors = {
        "tokenizer": tokenizer,
        "image_processor": image_processor,
        "feature_extractor": feature_extractor,
        "processor": processor,
    }
    for kind in (*pipeline_class.needs, *getattr(pipeline_class, "optional", ())):
        if processors[kind] is None and source:
            processors[kind] = _load_processor(kind, source, required=kind in pipeline_class.needs)
    return pipeline_class(model, device=device, **processors, **pipeline_kwargs)


def _load_model(path_or_repo: str | os.PathLike, model_tasks: tuple[str, ...], **kwargs: Any):
    import bestiary.auto as auto
    from bestiary.tasks import TASKS_BY_NAME

    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    errors = []
    for model_task in model_tasks:
        auto_class = getattr(auto, TASKS_BY_NAME[model_task].auto_class)
        try:
            return auto_class.from_pretrained(path_or_repo, **kwargs)
        except NotRegisteredError as exc:
            errors.append(str(exc))
    raise NotRegisteredError(f"No model class for {path_or_repo} serves this pipeline: " + " | ".join(errors))


def _load_processor(kind: str, source: str | os.PathLike, required: bool) -> Any:
    import bestiary.auto as auto

    loader = getattr(auto, _PROCESSOR_LOADERS[kind])
    try:
        return loader.from_pretrained(source)
    except (NotRegisteredError, OSError, ValueError) as exc:
        if required:
            raise
        logger.debug("No %s for %s: %s", kind, source, exc)
        return None


__all__ = ["pipeline"]
