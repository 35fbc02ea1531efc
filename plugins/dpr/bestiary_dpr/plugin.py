"""Hook implementations of the bestiary-dpr plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_MODELING = "bestiary_dpr.modeling_dpr"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """DPR: three model classes share ``model_type="dpr"``; the config's ``architectures`` picks one."""
    return [
        ArchitectureSpec(
            model_type="dpr",
            config="bestiary_dpr.configuration_dpr:DPRConfig",
            # The first class is the default when a config names none of them (as in transformers).
            models={
                "model": (
                    f"{_MODELING}:DPRQuestionEncoder",
                    f"{_MODELING}:DPRContextEncoder",
                    f"{_MODELING}:DPRReader",
                )
            },
            tokenizer="bestiary_dpr.tokenization_dpr:DPRTokenizerSelector",
            description="Dense passage retrieval: BERT question/context encoders and an extractive reader",
        )
    ]
