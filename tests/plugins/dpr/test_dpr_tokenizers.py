"""DPR tokenizers on the real MiniLM WordPiece vocabulary: reader inputs, span decoding, AutoTokenizer choice."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers.models.dpr.modeling_dpr import DPRReaderOutput as ReferenceReaderOutput

import bestiary.auto as auto
from bestiary.errors import ProcessingError
from bestiary_dpr.modeling_dpr import DPRReaderOutput
from bestiary_dpr.tokenization_dpr import (
    DPRContextEncoderTokenizer,
    DPRQuestionEncoderTokenizer,
    DPRReaderTokenizer,
    best_spans,
)

QUESTION = "What is love?"
TITLES = ["Haddaway", "Music of the 1990s in Europe", ""]
TEXTS = [
    "'What Is Love' is a song recorded by the artist Haddaway.",
    "Eurodance was popular across the continent.",
    "A passage without a title, and a little longer than the others, really.",
]


@pytest.fixture(scope="module")
def readers(minilm_path):
    return DPRReaderTokenizer.from_pretrained(minilm_path), transformers.DPRReaderTokenizer.from_pretrained(minilm_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": "max_length", "max_length": 40, "truncation": True},
        {"padding": True, "truncation": True, "max_length": 14},
        {"padding": True, "return_tensors": "pt"},
    ],
)
def test_reader_inputs_match_transformers(readers, kwargs):
    ours, reference = readers
    got = ours(questions=QUESTION, titles=TITLES, texts=TEXTS, **kwargs)
    expected = reference(questions=QUESTION, titles=TITLES, texts=TEXTS, **kwargs)
    assert list(got) == list(expected) == ["input_ids", "attention_mask"]
    for key in expected:
        if isinstance(expected[key], torch.Tensor):
            assert torch.equal(got[key], expected[key])
        else:
            assert got[key] == expected[key]


def test_reader_question_list_and_pair_forms_match(readers):
    ours, reference = readers
    questions = ["Who sang it?", "When was it popular?", "Anything?"]
    assert dict(ours(questions=questions, titles=TITLES, texts=TEXTS)) == dict(
        reference(questions=questions, titles=TITLES, texts=TEXTS)
    )
    assert dict(ours(QUESTION, TEXTS[0])) == dict(reference(QUESTION, TEXTS[0]))
    assert dict(ours(QUESTION)) == dict(reference(QUESTION))


def test_reader_input_errors_name_the_arguments(readers):
    with pytest.raises(ProcessingError, match="titles"):
        readers[0](questions=QUESTION, titles=TITLES[:2], texts=TEXTS)
    with pytest.raises(ProcessingError, match="questions"):
        readers[0](questions=["a", "b"], titles=TITLES, texts=TEXTS)


def crafted_logits(encoded, favour_titles: bool, seed: int = 0):
    """Random logits; with ``favour_titles`` the question and title tokens get the highest ones."""
    ids = encoded["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(ids.shape, generator=generator)
    end = torch.randn(ids.shape, generator=generator)
    relevance = torch.randn(ids.shape[0], generator=generator)
    if favour_titles:
        for row in range(ids.shape[0]):
            first = passage_start(ids[row].tolist())
            start[row, 1:first] += 6.0
            end[row, 1:first] += 6.0
    return start, end, relevance


def passage_start(ids: list[int]) -> int:
    seps = [i for i, token in enumerate(ids) if token == 102]
    return seps[1] + 1


def masked_outside_passages(encoded, start, end):
    """The logits with every question/title/special/padding position pushed far down."""
    start, end = start.clone(), end.clone()
    ids = encoded["input_ids"]
    for row in range(ids.shape[0]):
        first = passage_start(ids[row].tolist())
        last = int(encoded["attention_mask"][row].sum())
        outside = torch.ones(ids.shape[1], dtype=torch.bool)
        outside[first:last] = False
        start[row, outside] -= 1e4
        end[row, outside] -= 1e4
    return start, end


def as_tuples(spans):
    return [(s.doc_id, s.start_index, s.end_index, s.text, round(float(s.span_score), 4),
             round(float(s.relevance_score), 4)) for s in spans]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_spans_equal_transformers_when_titles_score_low(readers, seed):
    ours, reference = readers
    encoded = ours(questions=QUESTION, titles=TITLES, texts=TEXTS, padding=True, return_tensors="pt")
    start, end, relevance = crafted_logits(encoded, favour_titles=False, seed=seed)
    start, end = masked_outside_passages(encoded, start, end)
    kwargs = dict(num_spans=8, max_answer_length=4, num_spans_per_passage=3)
    got = ours.decode_best_spans(encoded, DPRReaderOutput(start, end, relevance), **kwargs)
    expected = reference.decode_best_spans(encoded, ReferenceReaderOutput(start, end, relevance), **kwargs)
    assert len(got) == 8
    assert as_tuples(got) == as_tuples(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_spans_never_come_from_questions_or_titles(readers, seed):
    ours, reference = readers
    encoded = ours(questions=QUESTION, titles=TITLES, texts=TEXTS, padding=True, return_tensors="pt")
    start, end, relevance = crafted_logits(encoded, favour_titles=True, seed=seed)
    kwargs = dict(num_spans=9, max_answer_length=5, num_spans_per_passage=3)
    got = ours.decode_best_spans(encoded, DPRReaderOutput(start, end, relevance), **kwargs)
    for span in got:
        row = encoded["input_ids"][span.doc_id].tolist()
        assert passage_start(row) <= span.start_index <= span.end_index < int(encoded["attention_mask"][span.doc_id].sum())
    # What transformers returns once question and title positions cannot win: the same spans.
    masked_start, masked_end = masked_outside_passages(encoded, start, end)
    expected = reference.decode_best_spans(
        encoded, ReferenceReaderOutput(masked_start, masked_end, relevance), **kwargs
    )
    assert [(s.doc_id, s.start_index, s.end_index, s.text) for s in got] == [
        (s.doc_id, s.start_index, s.end_index, s.text) for s in expected
    ]
    assert [round(float(s.span_score), 4) for s in got] == [
        round(float(start[s.doc_id, s.start_index] + end[s.doc_id, s.end_index]), 4) for s in got
    ]


def test_passages_cut_inside_the_title_give_no_span(readers):
    ours, _ = readers
    encoded = ours(questions=QUESTION, titles=["A very long title " * 5], texts=["text"], truncation=True,
                   max_length=12, return_tensors="pt")
    assert ours.passage_bounds(encoded["input_ids"][0].tolist())[0] == 12
    output = DPRReaderOutput(torch.zeros(1, 12), torch.zeros(1, 12), torch.zeros(1))
    assert ours.decode_best_spans(encoded, output) == []


def test_best_spans_skip_nested_spans_and_respect_the_length_limit():
    # Scores of spans up to 2 tokens: (1,2)=9, (1,1)=5, (2,2)=5, (2,3)=4, (3,3)=3, (0,0)=0, (0,1)=0.
    # (1,1) and (2,2) lie inside (1,2); (3,3) inside (2,3); (0,1) contains (0,0). Partial overlaps are allowed.
    starts, ends = [0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 4.0, 3.0]
    assert best_spans(starts, ends, max_answer_length=2, top_spans=10) == [(1, 2), (2, 3), (0, 0)]
    assert best_spans(starts, ends, max_answer_length=2, top_spans=2) == [(1, 2), (2, 3)]
    assert best_spans(starts, ends, max_answer_length=1, top_spans=10) == [(1, 1), (2, 2), (3, 3), (0, 0)]


@pytest.mark.parametrize(
    "reference_class, ours_class",
    [
        ("DPRQuestionEncoderTokenizer", DPRQuestionEncoderTokenizer),
        ("DPRContextEncoderTokenizer", DPRContextEncoderTokenizer),
        ("DPRReaderTokenizer", DPRReaderTokenizer),
    ],
)
def test_auto_tokenizer_picks_the_declared_class_and_matches(minilm_path, tmp_path, reference_class, ours_class):
    reference = getattr(transformers, reference_class).from_pretrained(minilm_path)
    reference.save_pretrained(tmp_path)
    transformers.DPRConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37).save_pretrained(tmp_path)
    ours = auto.AutoTokenizer.from_pretrained(tmp_path)
    assert type(ours) is ours_class
    assert ours.model_input_names == reference.model_input_names
    assert dict(ours("Who sang it?", "Haddaway")) == dict(reference("Who sang it?", "Haddaway"))


def test_auto_tokenizer_falls_back_on_architectures(minilm_path, tmp_path):
    transformers.BertTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    config = transformers.DPRConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=37)
    config.architectures = ["DPRReader"]
    config.save_pretrained(tmp_path)
    assert type(auto.AutoTokenizer.from_pretrained(tmp_path)) is DPRReaderTokenizer


def test_saved_tokenizers_load_in_transformers_as_dpr_classes(minilm_path, tmp_path):
    DPRReaderTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "DPRReaderTokenizer"
    back = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(back).__name__.startswith("DPRReaderTokenizer")
    assert back(questions=QUESTION, titles=TITLES, texts=TEXTS)["input_ids"] == DPRReaderTokenizer.from_pretrained(
        tmp_path
    )(questions=QUESTION, titles=TITLES, texts=TEXTS)["input_ids"]


def test_decode_best_spans_argument_errors(readers):
    ours, _ = readers
    encoded = ours(questions=QUESTION, titles=TITLES, texts=TEXTS, padding=True, return_tensors="pt")
    output = DPRReaderOutput(*crafted_logits(encoded, favour_titles=False))
    with pytest.raises(ProcessingError, match="num_spans_per_passage"):
        ours.decode_best_spans(encoded, output, num_spans_per_passage=0)
    with pytest.raises(ProcessingError, match="passages"):
        ours.decode_best_spans({"input_ids": encoded["input_ids"][:2]}, output)
    as_tuple = ours.decode_best_spans(encoded, (output.start_logits, output.end_logits, output.relevance_logits))
    assert as_tuple == ours.decode_best_spans(encoded, output)
