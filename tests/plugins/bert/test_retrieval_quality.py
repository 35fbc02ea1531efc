"""Retrieval quality of all-MiniLM-L6-v2 (real weights) on the cookbook corpus.

Measured with bestiary on this corpus (250 passages, 117 questions): recall@1 = 0.983 (115/117),
recall@3 = recall@5 = recall@10 = 1.000. The thresholds below leave room for about two questions to
move on other hardware, far above chance (recall@5 = 0.02).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[3] / "cookbook" / "retrieval" / "retrieve.py"
RECALL_AT_1_MIN = 0.95
RECALL_AT_5_MIN = 0.97


def load_cookbook():
    spec = importlib.util.spec_from_file_location("cookbook_retrieve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_well_formed():
    cookbook = load_cookbook()
    passages, questions = cookbook.load_corpus()
    by_id = {passage["id"]: passage for passage in passages}
    assert len(by_id) == len(passages) >= 200
    assert len(questions) >= 100
    for question in questions:
        assert question["answer"] in by_id[question["gold"]]["text"], question


def test_minilm_recall_on_the_cookbook_questions(minilm_path):
    cookbook = load_cookbook()
    passages, questions = cookbook.load_corpus()
    result = cookbook.evaluate_minilm(minilm_path, passages, questions)
    recall = result["recall"]
    assert recall[1] >= RECALL_AT_1_MIN, recall
    assert recall[5] >= RECALL_AT_5_MIN, recall
    assert result["mrr"] >= recall[1]


def test_recall_helpers_count_hits():
    cookbook = load_cookbook()
    ranking = torch.tensor([[2, 0, 1], [0, 1, 2], [1, 2, 0]])
    gold = torch.tensor([0, 0, 0])
    recall = cookbook.recall_at_k(ranking, gold, ks=(1, 2, 3))
    assert [round(recall[k], 6) for k in (1, 2, 3)] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert abs(cookbook.mean_reciprocal_rank(ranking, gold) - (1 / 2 + 1 + 1 / 3) / 3) < 1e-6
