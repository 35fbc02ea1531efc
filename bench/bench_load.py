"""Import, load, peak memory and forward latency: bestiary against transformers, in one run.

Each measurement runs in a fresh Python process so imports and memory start
from zero; peak memory is the process's VmHWM (not ru_maxrss, which a child
inherits from its parent). The checkpoint is a SmolLM2-135M-shaped Llama in
fp32 (about 540 MB), created once with transformers and cached.

    .venv/bin/python bench/bench_load.py [--repeats 3] [--folder /tmp/bestiary-bench-smollm2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)

PROBE = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    {import_line}
    imported = time.perf_counter()
    model = {load_expr}
    loaded = time.perf_counter()
    import torch
    torch.set_num_threads(2)
    ids = torch.randint(0, 49152, (1, 128))
    with torch.inference_mode():
        model(ids)
        latencies = []
        for _ in range(5):
            t = time.perf_counter(); model(ids); latencies.append(time.perf_counter() - t)
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    print(json.dumps({{"import": imported - start, "load": loaded - imported, "total": loaded - start,
                       "peak_mib": hwm(), "forward": sorted(latencies)[2]}}))
    """
)

LIBRARIES = {
    "bestiary": (
        "from bestiary import AutoModelForCausalLM",
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])",
    ),
    "transformers": (
        "from transformers import AutoModelForCausalLM",
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])",
    ),
}

IMPORT_PROBES = {
    "import bestiary": "import time; t=time.perf_counter(); import bestiary; print(time.perf_counter()-t)",
    "import bestiary + list_architectures()": (
        "import time, sys; t=time.perf_counter(); import bestiary; bestiary.list_architectures(); "
        "e=time.perf_counter()-t; assert 'torch' not in sys.modules; print(e)"
    ),
    "from transformers import AutoModelForCausalLM": (
        "import time; t=time.perf_counter(); from transformers import AutoModelForCausalLM; print(time.perf_counter()-t)"
    ),
}


def make_checkpoint(folder: Path) -> None:
    if (folder / "model.safetensors").exists():
        return
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMOLLM2_SHAPE)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def run(code: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr)
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/bestiary-bench-smollm2"))
    args = parser.parse_args()
    make_checkpoint(args.folder)

    print("Import cost (median of", args.repeats, "fresh processes)")
    for label, code in IMPORT_PROBES.items():
        seconds = statistics.median(float(run(code)) for _ in range(args.repeats))
        print(f"  {label:<48} {seconds * 1000:8.1f} ms")

    results = {}
    for name, (import_line, load_expr) in LIBRARIES.items():
        probe = PROBE.format(import_line=import_line, load_expr=load_expr)
        samples = [json.loads(run(probe, str(args.folder))) for _ in range(args.repeats)]
        results[name] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}

    ours, theirs = results["bestiary"], results["transformers"]
    print(f"\nSmolLM2-135M-shaped fp32 checkpoint ({args.folder}), median of {args.repeats} fresh processes")
    print(f"  {'metric':<28}{'bestiary':>12}{'transformers':>14}{'ratio':>9}")
    rows = [
        ("import (s)", "import"),
        ("from_pretrained (s)", "load"),
        ("import + load (s)", "total"),
        ("peak RSS, VmHWM (MiB)", "peak_mib"),
        ("forward, 128 tokens (s)", "forward"),
    ]
    for label, key in rows:
        print(f"  {label:<28}{ours[key]:>12.3f}{theirs[key]:>14.3f}{ours[key] / theirs[key]:>9.2f}x")
    print("\nTargets: import+load <= 0.5x, peak <= 1.0x, forward <= 1.0x (ratio = bestiary / transformers).")


if __name__ == "__main__":
    main()
