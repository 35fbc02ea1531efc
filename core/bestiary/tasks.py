"""The task table: every model task, its ``Auto*`` class name and fallbacks.

The ``Auto*`` model classes in :mod:`bestiary.auto` are generated from this
table, and plugin specs name their model classes by these task ids.
"""

from __future__ import annotations

from typing import NamedTuple


class Task(NamedTuple):
    """One model task: its id, its Auto class name, and tasks to fall back on."""

    name: str
    auto_class: str
    fallbacks: tuple[str, ...] = ()


TASKS: tuple[Task, ...] = (
    Task("model", "AutoModel"),
    Task("pretraining", "AutoModelForPreTraining"),
    Task("causal-lm", "AutoModelForCausalLM"),
    Task("masked-lm", "AutoModelForMaskedLM"),
    Task("seq2seq-lm", "AutoModelForSeq2SeqLM"),
    Task("sequence-classification", "AutoModelForSequenceClassification"),
    Task("token-classification", "AutoModelForTokenClassification"),
    Task("question-answering", "AutoModelForQuestionAnswering"),
    Task("table-question-answering", "AutoModelForTableQuestionAnswering"),
    Task("document-question-answering", "AutoModelForDocumentQuestionAnswering"),
    Task("visual-question-answering", "AutoModelForVisualQuestionAnswering"),
    Task("multiple-choice", "AutoModelForMultipleChoice"),
    Task("next-sentence-prediction", "AutoModelForNextSentencePrediction"),
    Task("text-encoding", "AutoModelForTextEncoding"),
    Task("image-classification", "AutoModelForImageClassification"),
    Task("zero-shot-image-classification", "AutoModelForZeroShotImageClassification"),
    Task("video-classification", "AutoModelForVideoClassification"),
    Task("masked-image-modeling", "AutoModelForMaskedImageModeling"),
    Task("backbone", "AutoBackbone"),
    Task("keypoint-detection", "AutoModelForKeypointDetection"),
    Task("keypoint-matching", "AutoModelForKeypointMatching"),
    Task("mask-generation", "AutoModelForMaskGeneration"),
    Task("object-detection", "AutoModelForObjectDetection"),
    Task("zero-shot-object-detection", "AutoModelForZeroShotObjectDetection"),
    Task("image-segmentation", "AutoModelForImageSegmentation"),
    Task("semantic-segmentation", "AutoModelForSemanticSegmentation"),
    Task("instance-segmentation", "AutoModelForInstanceSegmentation"),
    Task("universal-segmentation", "AutoModelForUniversalSegmentation"),
    Task("depth-estimation", "AutoModelForDepthEstimation"),
    Task("image-to-image", "AutoModelForImageToImage"),
    Task("image-text-to-text", "AutoModelForImageTextToText", ("vision2seq",)),
    Task("vision2seq", "AutoModelForVision2Seq", ("image-text-to-text",)),
    Task("ctc", "AutoModelForCTC"),
    Task("speech-seq2seq", "AutoModelForSpeechSeq2Seq"),
    Task("audio-classification", "AutoModelForAudioClassification"),
    Task("audio-frame-classification", "AutoModelForAudioFrameClassification"),
    Task("audio-xvector", "AutoModelForAudioXVector"),
    Task("text-to-spectrogram", "AutoModelForTextToSpectrogram"),
    Task("text-to-waveform", "AutoModelForTextToWaveform"),
)

TASKS_BY_NAME: dict[str, Task] = {task.name: task for task in TASKS}
TASKS_BY_AUTO_CLASS: dict[str, Task] = {task.auto_class: task for task in TASKS}

PROCESSOR_KINDS: tuple[str, ...] = ("tokenizer", "image_processor", "feature_extractor", "processor")
