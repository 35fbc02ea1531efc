"""A conformance kit for plugin authors.

Run it against your plugin from your own tests::

    from bestiary.testing import check_plugin

    def test_my_plugin_conforms(tmp_path):
        check_plugin("my-plugin", tmp_path, tiny_configs={"my_type": {"hidden_size": 8}})

It checks that every spec reference resolves, that each config class's
``model_type`` matches its spec, that ``save_pretrained`` /
``from_pretrained`` round-trip every model class with identical outputs, that
each head returns a ``ModelOutput`` of the type its ``forward`` declares, and
that importing the plugin's entry module does not import torch. Failures are
collected and raised together as one ``AssertionError``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bestiary.registry import ArchitectureSpec, get_registry


@dataclass
class ConformanceReport:
    """What the kit checked and what failed."""

    plugin: str
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, action: Callable[[], None]) -> None:
        """Run one check, recording success or the failure message."""
        try:
            action()
        except Exception as exc:  # every failure is collected, not only the first
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            self.passed.append(name)

    def raise_for_failures(self) -> None:
        """Raise one AssertionError listing every failed check."""
        if self.failures:
            raise AssertionError(
                f"plugin {self.plugin!r} failed {len(self.failures)} conformance check(s):\n  "
                + "\n  ".join(self.failures)
            )


def check_plugin(
    plugin: str,
    workdir: str | os.PathLike,
    *,
    tiny_configs: dict[str, dict[str, Any]] | None = None,
    dummy_inputs: dict[str, Callable[[Any, Any], dict[str, Any]]] | None = None,
    skip_tasks: dict[str, set[str]] | None = None,
) -> ConformanceReport:
    """Run every conformance check on one installed plugin and raise if any fails.

    ``plugin`` is the entry-point name or the distribution name.
    ``tiny_configs`` maps a model type to config overrides that make a model
    small enough to build quickly; ``dummy_inputs`` maps a model type to a
    function ``(config, model) -> forward kwargs`` when the generic inputs do
    not fit; ``skip_tasks`` maps a model type to tasks not to run forward on.
    """
    registry = get_registry()
    info = next((p for p in registry.plugins.values() if plugin in {p.name, p.distribution}), None)
    report = ConformanceReport(plugin)
    if info is None:
        known = sorted(p.distribution for p in registry.plugins.values())
        report.failures.append(f"plugin not installed or failed to load (installed: {known})")
        report.raise_for_failures()
    report.check("entry module imports no torch", lambda: _check_no_torch(info.module))
    for model_type in info.architectures:
        spec = registry.architecture(model_type).spec
        report.check(f"{model_type}: references resolve", lambda spec=spec: _check_references(spec))
        report.check(f"{model_type}: config model_type", lambda spec=spec: _check_config_type(spec))
        overrides = (tiny_configs or {}).get(model_type, {})
        inputs = (dummy_inputs or {}).get(model_type)
        skipped = (skip_tasks or {}).get(model_type, set())
        for task, references in spec.models.items():
            for reference in references:
                name = f"{model_type}: {task} {reference.rpartition(':')[2]}"
                target = Path(workdir) / f"{model_type}-{task}-{reference.rpartition(':')[2]}"
                report.check(
                    name,
                    lambda ref=reference, spec=spec, target=target, task=task: _check_model(
                        spec, ref, overrides, inputs, target, run_forward=task not in skipped
                    ),
                )
    report.raise_for_failures()
    return report


def _check_no_torch(module: str) -> None:
    code = f"import sys, importlib; importlib.import_module({module!r}); sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"importing {module} imports torch (or fails): {result.stderr.strip()[-300:]}")


def _check_references(spec: ArchitectureSpec) -> None:
    registry = get_registry()
    references = [spec.config, *(ref for refs in spec.models.values() for ref in refs)]
    references += [ref for ref in (spec.tokenizer, spec.image_processor, spec.feature_extractor, spec.processor) if ref]
    for reference in references:
        registry.resolve(reference)


def _check_config_type(spec: ArchitectureSpec) -> None:
    config_class = get_registry().resolve(spec.config)
    if config_class.model_type != spec.model_type:
        raise AssertionError(f"{config_class.__name__}.model_type is {config_class.model_type!r}, spec says {spec.model_type!r}")


def _check_model(
    spec: ArchitectureSpec,
    reference: str,
    overrides: dict[str, Any],
    inputs: Callable[[Any, Any], dict[str, Any]] | None,
    target: Path,
    run_forward: bool,
) -> None:
    import torch

    from bestiary.outputs import ModelOutput

    registry = get_registry()
    config = registry.resolve(spec.config).from_dict(overrides)
    model_class = registry.resolve(reference)
    torch.manual_seed(0)
    model = model_class.from_config(config).eval()
    model.save_pretrained(target)
    reloaded = model_class.from_pretrained(target)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        if not torch.equal(a, b):
            raise AssertionError(f"{name} differs after save_pretrained/from_pretrained")
    if not run_forward:
        return
    kwargs = inputs(config, model) if inputs else generic_inputs(config, model)
    with torch.no_grad():
        output = model(**kwargs)
        again = reloaded(**kwargs)
    if not isinstance(output, ModelOutput):
        raise AssertionError(f"{model_class.__name__}.forward returned {type(output).__name__}, not a ModelOutput")
    declared = _declared_output(model_class)
    if declared is not None and not isinstance(output, declared):
        raise AssertionError(f"{model_class.__name__}.forward declares {declared.__name__}, returned {type(output).__name__}")
    for key, value in output.items():
        if isinstance(value, torch.Tensor) and not torch.allclose(value, again[key], atol=1e-5, equal_nan=True):
            raise AssertionError(f"output {key!r} differs after a save/load round trip")


def _declared_output(model_class: type) -> type | None:
    from bestiary.outputs import ModelOutput

    try:
        hints = typing.get_type_hints(model_class.forward)
    except Exception:
        return None
    declared = hints.get("return")
    return declared if inspect.isclass(declared) and issubclass(declared, ModelOutput) else None


def generic_inputs(config: Any, model: Any) -> dict[str, Any]:
    """Small dummy inputs for the model's main input (token ids, pixels, audio or features)."""
    import torch

    name = getattr(model, "main_input_name", "input_ids")
    generator = torch.Generator().manual_seed(0)
    if name == "input_ids":
        vocab = getattr(config.get_text_config(), "vocab_size", 32)
        return {"input_ids": torch.randint(0, vocab, (2, 7), generator=generator)}
    if name == "pixel_values":
        size = getattr(config, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(1, channels, size, size, generator=generator)}
    if name == "input_values":
        return {"input_values": torch.randn(1, 4000, generator=generator)}
    raise ValueError(f"No generic dummy input for {name!r}; pass dummy_inputs for this model type.")
