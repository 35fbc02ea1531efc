"""SmolLM2-135M-Instruct Q4_1 GGUF: load time, resident memory and decode speed, side by side.

Paths measured, each in a fresh Python process (so imports, caches and peak
memory start from zero), ``--repeats`` times, medians reported:

- ``dequant``: bestiary, weights dequantized to float32 (``from_pretrained(gguf_file=)``)
- ``quantized``: bestiary, Q8_0/Q4_1 weights kept packed (``keep_quantized=True``)
- ``quantized-compiled``: the same, decoding with a static cache and a compiled
  decode step (``cache_implementation="static", compile_decode=True``); a short
  warm-up generation compiles first (timed separately; inductor caches it on disk)
- ``transformers``: transformers' own GGUF load (dequantizes to float32; needs gguf + accelerate)
- ``llamacpp``: llama.cpp through llama-cpp-python, if importable by ``--llama-python``
  (default: this interpreter, or ``$BESTIARY_LLAMA_PYTHON``)

Numbers per path: import seconds; model load seconds (wall and CPU); resident
memory before and after the load (VmRSS) and the process's peak (VmHWM, after
decoding); tokenizer load seconds; prefill seconds and steady decode tokens/s
of greedy decoding after the chat prompt "What is the capital of France?".

    .venv/bin/python bench/bench_gguf.py [--repeats 3] [--threads 2] [--new-tokens 64] [--json out.json]

The machine is shared: wall times move with other people's load. CPU seconds
(``time.process_time``) are steadier for single-threaded phases; compare paths
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

PROMPT = "What is the capital of France?"
MODES = ("dequant", "quantized", "quantized-compiled", "transformers", "llamacpp")


# ---------------------------------------------------------------- worker side (fresh process)


def _status(field: str) -> float:
    """Return a /proc/self/status memory field in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Clock:
    """A streamer (put/end) recording when each generated token arrives."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length
        self.times: list[float] = []
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        count = int(value.numel())
        if not self.seen_prompt:
            self.seen_prompt = True
            if count == self.prompt_length:
                return
        now = time.perf_counter()
        self.times.extend([now] * count)

    def end(self) -> None:
        pass


def _decode_stats(start: float, times: list[float]) -> dict[str, float]:
    """Prefill seconds (to the first token) and steady decode tokens/s (between first and last)."""
    if len(times) < 2:
        return {"prefill_s": float("nan"), "decode_tok_s": float("nan"), "new_tokens": len(times)}
    return {
        "prefill_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
        "new_tokens": len(times),
    }


def _torch_worker(mode: str, path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    if mode == "transformers":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    else:
        import torch

        from bestiary import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(threads)
    result: dict[str, Any] = {"import_s": time.perf_counter() - start, "rss_before_mib": _status("VmRSS")}
    kwargs: dict[str, Any] = {"gguf_file": path.name}
    if mode.startswith("quantized"):
        kwargs["keep_quantized"] = True
    if mode == "transformers":
        kwargs["dtype"] = torch.float32
    wall, cpu = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), **kwargs)
    result["load_s"] = time.perf_counter() - wall
    result["load_cpu_s"] = time.process_time() - cpu
    result["rss_after_load_mib"] = _status("VmRSS")
    result["hwm_load_mib"] = _status("VmHWM")
    wall = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    result["tokenizer_s"] = time.perf_counter() - wall
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    clock = _Clock(encoded["input_ids"].shape[1])
    settings: dict[str, Any] = {}
    if mode == "quantized-compiled":
        settings = {"cache_implementation": "static", "compile_decode": True}
    with torch.inference_mode():
        if settings:
            wall = time.perf_counter()
            model.generate(**encoded, max_new_tokens=3, do_sample=False, **settings)
            result["compile_s"] = time.perf_counter() - wall
        begin = time.perf_counter()
        output = model.generate(
            **encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock, **settings
        )
    result.update(_decode_stats(begin, clock.times))
    result["answer"] = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :][:12], skip_special_tokens=True)
    result["hwm_mib"] = _status("VmHWM")
    return result


def _llamacpp_worker(path: Path, threads: int, new_tokens: int, prompt_ids: list[int]) -> dict[str, Any]:
    start = time.perf_counter()
    from llama_cpp import Llama

    result: dict[str, Any] = {"import_s": time.perf_counter() - start, "rss_before_mib": _status("VmRSS")}
    wall, cpu = time.perf_counter(), time.process_time()
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    result["load_s"] = time.perf_counter() - wall
    result["load_cpu_s"] = time.process_time() - cpu
    result["rss_after_load_mib"] = _status("VmRSS")
    result["hwm_load_mib"] = _status("VmHWM")
    result["tokenizer_s"] = 0.0  # part of the model load
    times: list[float] = []
    tokens: list[int] = []
    begin = time.perf_counter()
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        times.append(time.perf_counter())
        tokens.append(token)
        if len(times) >= new_tokens:
            break
    result.update(_decode_stats(begin, times))
    result["answer"] = llm.detokenize(tokens[:12]).decode("utf-8", errors="replace")
    result["hwm_mib"] = _status("VmHWM")
    return result


# ---------------------------------------------------------------- driver side


def _demo_path() -> Path:
    from bestiary.cli import demo_model_path

    return demo_model_path()


def _prompt_ids(path: Path) -> list[int]:
    from bestiary import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    return list(encoded)


def _llama_python(requested: str | None) -> str | None:
    """Return an interpreter that imports llama_cpp, or None."""
    candidates = [requested, os.environ.get("BESTIARY_LLAMA_PYTHON"), sys.executable]
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import llama_cpp"], capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


def _run_worker(python: str, mode: str, args: argparse.Namespace, path: Path, prompt_ids: list[int]) -> dict[str, Any]:
    command = [
        python, os.path.abspath(__file__), "--worker", mode, "--path", str(path),
        "--threads", str(args.threads), "--new-tokens", str(args.new_tokens), "--prompt-ids", json.dumps(prompt_ids),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


ROWS: list[tuple[str, str, Callable[[float], str]]] = [
    ("import (s)", "import_s", "{:.2f}".format),
    ("model load, wall (s)", "load_s", "{:.2f}".format),
    ("model load, CPU (s)", "load_cpu_s", "{:.2f}".format),
    ("tokenizer load (s)", "tokenizer_s", "{:.2f}".format),
    ("RSS before load (MiB)", "rss_before_mib", "{:.0f}".format),
    ("RSS after load (MiB)", "rss_after_load_mib", "{:.0f}".format),
    ("  growth from the load (MiB)", "load_growth_mib", "{:.0f}".format),
    ("peak RSS during load, VmHWM (MiB)", "hwm_load_mib", "{:.0f}".format),
    ("peak RSS after decoding, VmHWM (MiB)", "hwm_mib", "{:.0f}".format),
    ("compile warm-up (s)", "compile_s", "{:.1f}".format),
    ("prefill + first token (s)", "prefill_s", "{:.3f}".format),
    ("decode (tokens/s)", "decode_tok_s", "{:.1f}".format),
]


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    """Run the benchmark (or, with ``--worker``, one measurement) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--llama-python", help="interpreter with llama-cpp-python installed")
    parser.add_argument("--json", help="also write all runs to this file")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        path = Path(args.path)
        if args.worker == "llamacpp":
            result = _llamacpp_worker(path, args.threads, args.new_tokens, json.loads(args.prompt_ids))
        else:
            result = _torch_worker(args.worker, path, args.threads, args.new_tokens)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    path = _demo_path()
    prompt_ids = _prompt_ids(path)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    pythons = {mode: sys.executable for mode in modes}
    if "llamacpp" in modes:
        llama = _llama_python(args.llama_python)
        if llama is None:
            sys.stderr.write("llama-cpp-python is not importable (pass --llama-python); skipping llamacpp\n")
            modes.remove("llamacpp")
        else:
            pythons["llamacpp"] = llama
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):  # interleave paths so machine load affects each alike
        for mode in modes:
            run = _run_worker(pythons[mode], mode, args, path, prompt_ids)
            run["load_growth_mib"] = run["rss_after_load_mib"] - run["rss_before_mib"]
            runs[mode].append(run)
            sys.stderr.write(f"[{repeat + 1}/{args.repeats}] {mode}: load {run['load_s']:.2f}s "
                             f"decode {run['decode_tok_s']:.1f} tok/s answer {run['answer']!r}\n")

    width = max(len(label) for label, _, _ in ROWS) + 2
    header = "".join(f"{mode:>20}" for mode in modes)
    lines = [f"SmolLM2-135M-Instruct Q4_1 GGUF ({path.stat().st_size / 2**20:.0f} MiB), "
             f"{args.threads} threads, {args.new_tokens} new tokens, median of {args.repeats}",
             f"{'':<{width}}{header}"]
    for label, key, fmt in ROWS:
        lines.append(f"{label:<{width}}" + "".join(f"{fmt(_median(runs[mode], key)):>20}" for mode in modes))
    if "dequant" in runs and "quantized" in runs:
        fp32 = _median(runs["dequant"], "load_growth_mib")
        packed = _median(runs["quantized"], "load_growth_mib")
        lines.append(f"kept-quantized / fp32 resident growth from the load: {packed / fp32:.2f}x")
        lines.append(
            f"kept-quantized / fp32 peak RSS: {_median(runs['quantized'], 'hwm_mib') / _median(runs['dequant'], 'hwm_mib'):.2f}x"
        )
    if "transformers" in runs:
        reference = _median(runs["transformers"], "decode_tok_s")
        for mode in modes:
            if mode != "transformers":
                lines.append(f"decode {mode} / transformers: {_median(runs[mode], 'decode_tok_s') / reference:.2f}x")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
