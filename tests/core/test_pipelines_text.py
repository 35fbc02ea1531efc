"""Text pipelines: feature-extraction, fill-mask, text-classification and question-answering.

Tiny random BERT checkpoints (saved by transformers with the real MiniLM
WordPiece tokenizer) are run through bestiary's and transformers' pipelines;
question answering (which transformers 5.24 no longer ships as a pipeline)
is checked with a model whose logits are set by hand.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from bestiary.errors import ProcessingError
from bestiary.outputs import QuestionAnsweringModelOutput
from bestiary.pipelines import pipeline
from tests.helpers.fixtures_paths import require_minilm_folder

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
HEADS = {
    "model": "AutoModel",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
TEXTS = ["A man is eating food.", "The girl is carrying a baby across the busy street.", "Hi"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread on a shared machine; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny random checkpoint per head, each saved with the MiniLM tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(require_minilm_folder())
    built = {}
    for head, auto_name in HEADS.items():
        extra = {"num_labels": 3} if head == "sequence-classification" else {}
        if head == "regression":
            extra = {"num_labels": 1, "problem_type": "regression"}
        torch.manual_seed(0)
        model = getattr(transformers, auto_name).from_config(transformers.BertConfig(**TINY, **extra))
        folder = tmp_path_factory.mktemp(head)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        built[head] = str(folder)
    return built


def close(a, b, tolerance: float = 1e-5) -> bool:
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item() <= tolerance


# -- feature-extraction --------------------------------------------------------------------------------
def test_feature_extraction_matches_transformers_per_token(folders):
    ours = pipeline("feature-extraction", model=folders["model"])
    reference = transformers.pipeline("feature-extraction", model=folders["model"])
    for text in TEXTS:
        got, expected = ours(text), reference(text)
        assert torch.tensor(got).shape == torch.tensor(expected).shape
        assert close(got, expected)
    batched = ours(TEXTS, batch_size=3)  # padding inside the batch is trimmed away per text
    for text, result in zip(TEXTS, batched):
        assert close(result, reference(text))


def test_feature_extraction_pooling_choices(folders):
    from bestiary.auto import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(folders["model"]), AutoTokenizer.from_pretrained(folders["model"])
    extractor = pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    with torch.inference_mode():
        for text in TEXTS:
            outputs = model(**tokenizer(text, return_tensors="pt"))
            states = outputs.last_hidden_state[0]
            assert close(extractor(text, pooling="cls", return_tensors=True), states[0])
            assert close(extractor(text, pooling="mean", return_tensors=True), states.mean(dim=0))
            assert close(extractor(text, pooling="pooler", return_tensors=True), outputs.pooler_output[0])
            normalized = extractor(text, pooling="mean", normalize=True)
            assert isinstance(normalized, list) and len(normalized) == TINY["hidden_size"]
            assert abs(torch.tensor(normalized).norm().item() - 1.0) < 1e-5
    # Batched mean pooling ignores padding: same vectors as one text at a time.
    batched = extractor(TEXTS, pooling="mean", return_tensors=True, batch_size=3)
    for text, vector in zip(TEXTS, batched):
        assert close(vector, extractor(text, pooling="mean", return_tensors=True))


def test_feature_extraction_uses_the_pooled_output_of_dpr_encoders(folders):
    from bestiary.auto import AutoTokenizer
    from bestiary_dpr.configuration_dpr import DPRConfig
    from bestiary_dpr.modeling_dpr import DPRContextEncoder

    encoder = DPRContextEncoder(DPRConfig(**TINY, projection_dim=8)).eval()
    extractor = pipeline("feature-extraction", model=encoder, tokenizer=AutoTokenizer.from_pretrained(folders["model"]))
    vector = extractor("Paris is the capital of France.", return_tensors=True)
    assert vector.shape == (8,)
    with pytest.raises(ProcessingError, match="pooling='pooler'"):
        extractor("text", pooling="mean")


def test_feature_extraction_argument_errors(folders):
    extractor = pipeline("feature-extraction", model=folders["model"])
    with pytest.raises(ProcessingError, match="pooling"):
        extractor("text", pooling="max")
    with pytest.raises(ProcessingError, match="normalize"):
        extractor("text", normalize=True)
    with pytest.raises(TypeError, match="unknown arguments"):
        extractor("text", top_k=3)


def test_feature_extraction_truncates_when_asked(folders):
    extractor = pipeline("feature-extraction", model=folders["model"])
    long_text = "word " * 40
    assert len(extractor(long_text, tokenize_kwargs={"max_length": 16, "truncation": True})[0]) == 16


# -- fill-mask -----------------------------------------------------------------------------------------
MASKED = ["Paris is the [MASK] of France.", "The [MASK] sat on the [MASK] mat.", "[MASK]"]


def test_fill_mask_matches_transformers(folders):
    ours = pipeline("fill-mask", model=folders["masked-lm"])
    reference = transformers.pipeline("fill-mask", model=folders["masked-lm"])
    for text in MASKED:
        assert_same_predictions(ours(text, top_k=4), reference(text, top_k=4))
    assert_same_predictions(ours(MASKED, batch_size=2), reference(MASKED))
    assert_same_predictions(ours([MASKED[0]]), reference([MASKED[0]]))


def test_fill_mask_targets_match_transformers(folders):
    ours = pipeline("fill-mask", model=folders["masked-lm"])
    reference = transformers.pipeline("fill-mask", model=folders["masked-lm"])
    targets = ["capital", "city", "heart"]
    assert_same_predictions(ours(MASKED[0], targets=targets), reference(MASKED[0], targets=targets))
    got = ours(MASKED[0], targets=["capital", "zzzqqq"], top_k=10)  # unknown word: its first token
    assert len(got) == 2 and {entry["token_str"] for entry in got} == {"capital", "z"}


def test_fill_mask_errors(folders):
    fill = pipeline("fill-mask", model=folders["masked-lm"])
    with pytest.raises(ProcessingError, match="No mask token"):
        fill("There is nothing to fill here.")
    with pytest.raises(ProcessingError, match="top_k"):
        fill(MASKED[0], top_k=0)


def assert_same_predictions(got, expected):
    if isinstance(expected, dict):
        assert got["token"] == expected["token"] and got["token_str"] == expected["token_str"]
        assert got["sequence"] == expected["sequence"]
        assert abs(got["score"] - expected["score"]) <= 1e-5
        return
    assert isinstance(got, list) and len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_same_predictions(a, b)


# -- text-classification -------------------------------------------------------------------------------
CLASSIFY_CALLS = [
    (("A man is eating food.",), {}),
    ((TEXTS,), {}),
    (("A man is eating food.",), {"top_k": 2}),
    ((TEXTS,), {"top_k": None}),
    (({"text": "A question?", "text_pair": "An answer."},), {}),
    (("Some text",), {"function_to_apply": "sigmoid", "top_k": None}),
    (("Some text",), {"function_to_apply": "none"}),
]


@pytest.mark.parametrize("args, kwargs", CLASSIFY_CALLS)
def test_text_classification_matches_transformers(folders, args, kwargs):
    ours = pipeline("text-classification", model=folders["sequence-classification"])
    reference = transformers.pipeline("text-classification", model=folders["sequence-classification"])
    assert_same_labels(ours(*args, batch_size=2, **kwargs), reference(*args, **kwargs))


def test_text_classification_accepts_the_pair_list_form(folders):
    classify = pipeline("text-classification", model=folders["sequence-classification"])
    pair = classify({"text": "A question?", "text_pair": "An answer."})
    assert classify([["A question?", "An answer."]]) == pair
    assert classify(["A question?", "An answer."]) != [pair, pair]  # a plain list is two texts


def test_regression_scores_are_raw_logits(folders):
    ours = pipeline("sentiment-analysis", model=folders["regression"])
    reference = transformers.pipeline("text-classification", model=folders["regression"])
    assert_same_labels(ours(TEXTS), reference(TEXTS))


def test_text_classification_errors(folders):
    classify = pipeline("text-classification", model=folders["sequence-classification"])
    with pytest.raises(ProcessingError, match="function_to_apply"):
        classify("text", function_to_apply="relu")
    with pytest.raises(ProcessingError, match="text_pair"):
        classify({"question": "no text key"})


def assert_same_labels(got, expected):
    if isinstance(expected, dict):
        assert got["label"] == expected["label"] and abs(got["score"] - expected["score"]) <= 1e-5
        return
    assert isinstance(got, list) and len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_same_labels(a, b)


# -- question-answering -------------------------------------------------------------------------------
class KeywordQA(nn.Module):
    """Start logits peak on one token id, end logits on another, CLS gets ``cls_logit``."""

    def __init__(self, start_id: int, end_id: int, cls_logit: float = 0.0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.start_id, self.end_id, self.cls_logit = start_id, end_id, cls_logit

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        start = (input_ids == self.start_id).float() * 10.0
        end = (input_ids == self.end_id).float() * 10.0
        start[:, 0] = end[:, 0] = self.cls_logit
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)


@pytest.fixture(scope="module")
def qa_tokenizer(folders):
    from bestiary.auto import AutoTokenizer

    return AutoTokenizer.from_pretrained(folders["question-answering"])


def keyword_pipeline(tokenizer, start_word: str, end_word: str, cls_logit: float = 0.0):
    start_id, end_id = tokenizer.convert_tokens_to_ids([start_word, end_word])
    assert tokenizer.unk_token_id not in (start_id, end_id), "pick words that are single vocabulary tokens"
    return pipeline("question-answering", model=KeywordQA(start_id, end_id, cls_logit), tokenizer=tokenizer)


def test_question_answering_finds_the_span_in_a_later_window(qa_tokenizer):
    filler = " ".join(f"plain{i % 7} text" for i in range(150))
    context = f"{filler} The zebra crossed the savanna near the lion herd. {filler}"
    qa = keyword_pipeline(qa_tokenizer, "zebra", "herd")
    windows = qa.preprocess({"question": "Which animals?", "context": context}, max_seq_len=64, doc_stride=16)
    assert len(windows["input_ids"]) > 5  # the context really is cut into windows
    answer = qa(question="Which animals?", context=context, max_seq_len=64, doc_stride=16)
    assert answer["answer"] == "zebra crossed the savanna near the lion herd"
    assert context[answer["start"] : answer["end"]] == answer["answer"]
    assert answer["score"] > 0.9


def test_question_answering_respects_max_answer_len_and_top_k(qa_tokenizer):
    context = "The zebra crossed the savanna near the lion herd."
    qa = keyword_pipeline(qa_tokenizer, "zebra", "herd")
    short = qa(question="Which?", context=context, max_answer_len=3)
    assert "herd" not in short["answer"] or "zebra" not in short["answer"]
    top = qa(question="Which?", context=context, top_k=3)
    assert isinstance(top, list) and len(top) == 3
    assert [entry["score"] for entry in top] == sorted((entry["score"] for entry in top), reverse=True)
    assert len({(entry["start"], entry["end"]) for entry in top}) == 3
    for entry in top:
        assert context[entry["start"] : entry["end"]] == entry["answer"]


def test_question_answering_aligns_spans_to_words(qa_tokenizer):
    context = "He was an unaffable man."
    pieces = qa_tokenizer.tokenize("unaffable")
    assert len(pieces) > 1
    qa = keyword_pipeline(qa_tokenizer, pieces[1], pieces[1])
    assert qa(question="What?", context=context)["answer"] == "unaffable"
    partial = qa(question="What?", context=context, align_to_words=False)["answer"]
    assert partial != "unaffable" and partial in "unaffable"


def test_question_answering_never_answers_from_the_question(qa_tokenizer):
    qa = keyword_pipeline(qa_tokenizer, "zebra", "zebra")
    answer = qa(question="Is the zebra here?", context="Only lions live in this park.")
    assert "zebra" not in answer["answer"]
    assert "Only lions live in this park."[answer["start"] : answer["end"]] == answer["answer"]


def test_question_answering_impossible_answer(qa_tokenizer):
    qa = keyword_pipeline(qa_tokenizer, "zebra", "lion", cls_logit=30.0)
    context = "The zebra met a lion."
    assert qa(question="Who?", context=context, handle_impossible_answer=True) == {
        "score": pytest.approx(1.0, abs=1e-4), "start": 0, "end": 0, "answer": ""
    }
    assert qa(question="Who?", context=context)["answer"] == "zebra met a lion"


def test_question_answering_input_forms_and_batches_agree(folders):
    qa = pipeline("question-answering", model=folders["question-answering"])
    contexts = ["Gustave Eiffel's company built the tower in Paris.", "The Nile flows north into the sea. " * 30]
    questions = ["Who built it?", "Where does it flow?"]
    one_by_one = [qa(question=q, context=c, max_seq_len=48, doc_stride=8) for q, c in zip(questions, contexts)]
    as_dicts = qa([{"question": q, "context": c} for q, c in zip(questions, contexts)], batch_size=2,
                  max_seq_len=48, doc_stride=8)
    as_lists = qa(question=questions, context=contexts, max_seq_len=48, doc_stride=8)
    for a, b, c, context in zip(one_by_one, as_dicts, as_lists, contexts):
        assert a["answer"] == b["answer"] == c["answer"] == context[a["start"] : a["end"]]
        assert abs(a["score"] - b["score"]) < 1e-5 and abs(a["score"] - c["score"]) < 1e-5


def test_question_answering_errors(qa_tokenizer, folders):
    qa = pipeline("question-answering", model=folders["question-answering"])
    with pytest.raises(ProcessingError, match="question and a context"):
        qa(question="Who?")
    with pytest.raises(ProcessingError, match="max_seq_len"):
        qa(question="why " * 40, context="Because.", max_seq_len=32)
    with pytest.raises(ProcessingError, match="questions"):
        qa(question=["a", "b"], context=["x", "y", "z"])
    with pytest.raises(TypeError, match="unknown arguments"):
        qa(question="Who?", context="Me.", pooling="mean")


def test_batches_need_a_pad_token_only_when_lengths_differ(folders):
    from bestiary.auto import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["model"])
    tokenizer.pad_token = None
    extractor = pipeline("feature-extraction", model=AutoModel.from_pretrained(folders["model"]), tokenizer=tokenizer)
    assert len(extractor("one text needs no padding", pooling="cls")) == TINY["hidden_size"]
    assert len(extractor(["same length", "same size"], pooling="cls", batch_size=2)) == 2
    with pytest.raises(ProcessingError, match="padding token"):
        extractor(["short", "a much longer text than the first"], pooling="cls", batch_size=2)
