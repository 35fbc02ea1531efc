"""Hook implementations of the bestiary-bert plugin (imports no torch)."""

from __future__ import annotations

from bestiary.hookspecs import hookimpl
from bestiary.registry import ArchitectureSpec

_MODELING = "bestiary_bert.modeling_bert"


@hookimpl
def bestiary_architectures() -> list[ArchitectureSpec]:
    """BERT: the encoder and its heads; the tokenizer is the core WordPiece-capable ``Tokenizer``."""
    return [
        ArchitectureSpec(
            model_type="bert",
            config="bestiary_bert.configuration_bert:BertConfig",
            models={
                "model": f"{_MODELING}:BertModel",
                "pretraining": f"{_MODELING}:BertForPreTraining",
                "masked-lm": f"{_MODELING}:BertForMaskedLM",
                "sequence-classification": f"{_MODELING}:BertForSequenceClassification",
                "token-classification": f"{_MODELING}:BertForTokenClassification",
                "question-answering": f"{_MODELING}:BertForQuestionAnswering",
                "next-sentence-prediction": f"{_MODELING}:BertForNextSentencePrediction",
                "multiple-choice": f"{_MODELING}:BertForMultipleChoice",
            },
            tokenizer="bestiary.processing.tokenization:Tokenizer",
            description="BERT bidirectional encoder with absolute position embeddings",
        )
    ]
