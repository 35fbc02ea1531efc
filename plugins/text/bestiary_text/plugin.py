"""Hook implementations of the bestiary-text plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_TOKENIZER = "bestiary.processing.tokenization:Tokenizer"


def _decoder_spec(model_type: str, module: str, prefix: str, gguf_names: tuple[str, ...]) -> ArchitectureSpec:
    modeling = f"bestiary_text.modeling_{module}"
    return ArchitectureSpec(
        model_type=model_type,
        config=f"bestiary_text.configuration_{module}:{prefix}Config",
        models={
            "model": f"{modeling}:{prefix}Model",
            "causal-lm": f"{modeling}:{prefix}ForCausalLM",
            "sequence-classification": f"{modeling}:{prefix}ForSequenceClassification",
            "token-classification": f"{modeling}:{prefix}ForTokenClassification",
            "question-answering": f"{modeling}:{prefix}ForQuestionAnswering",
        },
        tokenizer=_TOKENIZER,
        gguf_architectures=gguf_names,
        gguf_converter="bestiary_text.gguf_maps:CONVERTER",
        description=f"{prefix} decoder-only language model",
    )


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """Llama, Mistral and Qwen2."""
    return [
        _decoder_spec("llama", "llama", "Llama", ("llama",)),
        _decoder_spec("mistral", "mistral", "Mistral", ("mistral",)),
        _decoder_spec("qwen2", "qwen2", "Qwen2", ("qwen2",)),
    ]
