"""Greedy decoding speed: bestiary (dynamic, static, static + torch.compile) against transformers, in one run.

The model is SmolLM2-135M-shaped (hidden 576, intermediate 1536, 30 layers,
9 heads, 3 key/value heads, vocab 49152, tied embeddings), fp32, random
weights created by transformers and saved once; both libraries load the same
folder. Batch 1, two threads (``--threads``).

For each configuration the script times whole ``generate()`` calls with a
streamer that timestamps every token: prefill latency is the time to the
first new token, per-token latency the median gap between later tokens.
Runs are interleaved across configurations; the best of ``--repeats`` runs
is reported (on a shared machine the best run is the least disturbed one),
with ratios against transformers' default (dynamic cache) greedy decoding. The compiled configuration is warmed up first (compilation
time is reported separately). Every configuration must produce the same
tokens; the script says so.

    .venv/bin/python bench/bench_generate.py [--new-tokens 64] [--prompt 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)


class Stopwatch:
    """A streamer (both libraries' interface) that records when each batch of tokens arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def checkpoint(folder: Path) -> Path:
    """The random SmolLM2-shaped checkpoint (created once by transformers)."""
    if (folder / "model.safetensors").exists():
        return folder
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SHAPE))
    model.save_pretrained(folder)
    return folder


def timed(generate: Callable[..., Any], ids: torch.Tensor, new_tokens: int, **settings: Any) -> dict[str, Any]:
    """Run one generate call; return prefill latency, per-token latency and the tokens."""
    watch = Stopwatch()
    start = time.perf_counter()
    out = generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=watch, **settings)
    end = time.perf_counter()
    first = watch.times[1]  # [0] is the prompt, [1] the first new token
    gaps = [b - a for a, b in zip(watch.times[1:], watch.times[2:])]
    return {
        "prefill_s": first - start,
        "per_token_s": statistics.median(gaps),
        "total_s": end - start,
        "tokens": out[0].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=Path(tempfile.gettempdir()) / "bestiary-bench-smollm2-shape")
    parser.add_argument("--no-compile", action="store_true", help="skip the static + torch.compile configuration")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = checkpoint(args.checkpoint)
    import transformers

    import bestiary.auto as auto

    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = auto.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.randint(3, SHAPE["vocab_size"], (1, args.prompt), generator=torch.Generator().manual_seed(1))

    configs: dict[str, Callable[[], dict[str, Any]]] = {
        "transformers dynamic": lambda: timed(reference.generate, ids, args.new_tokens),
        "transformers static": lambda: timed(reference.generate, ids, args.new_tokens, cache_implementation="static"),
        "bestiary dynamic": lambda: timed(ours.generate, ids, args.new_tokens),
        "bestiary static": lambda: timed(ours.generate, ids, args.new_tokens, cache_implementation="static"),
    }
    compile_seconds = None
    if not args.no_compile:
        configs["bestiary static + compile"] = lambda: timed(
            ours.generate, ids, args.new_tokens, cache_implementation="static", compile_decode=True
        )
        start = time.perf_counter()
        configs["bestiary static + compile"]()  # compiles the decode step
        compile_seconds = time.perf_counter() - start
    for run in configs.values():  # warm-up (allocator, first-call costs)
        run()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run in configs.items():
            runs[name].append(run())

    baseline = "transformers dynamic"
    summary = {}
    for name, results in runs.items():
        prefill = min(r["prefill_s"] for r in results)
        per_token = min(r["per_token_s"] for r in results)
        summary[name] = {"prefill_ms": prefill * 1e3, "per_token_ms": per_token * 1e3, "tokens_per_s": 1.0 / per_token}
    base = summary[baseline]
    reference_tokens = runs[baseline][0]["tokens"]
    print(f"SmolLM2-135M shape, fp32, batch 1, {args.threads} threads, prompt {args.prompt}, {args.new_tokens} new tokens")
    print(f"{'configuration':28} {'prefill ms':>11} {'ms/token':>9} {'tokens/s':>9} {'prefill x':>10} {'decode x':>9}  same tokens")
    for name, row in summary.items():
        row["prefill_speedup"] = base["prefill_ms"] / row["prefill_ms"]
        row["decode_speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["same_tokens"] = all(r["tokens"] == reference_tokens for r in runs[name])
        print(
            f"{name:28} {row['prefill_ms']:11.1f} {row['per_token_ms']:9.2f} {row['tokens_per_s']:9.1f} "
            f"{row['prefill_speedup']:10.2f} {row['decode_speedup']:9.2f}  {row['same_tokens']}"
        )
    if compile_seconds is not None:
        print(f"first compiled call (compilation included): {compile_seconds:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"settings": vars(args) | {"checkpoint": str(folder), "json": str(args.json)}, "results": summary, "compile_s": compile_seconds}, indent=2, default=str))


if __name__ == "__main__":
    main()
