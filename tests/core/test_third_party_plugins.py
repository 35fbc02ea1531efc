"""Third-party plugins are installed for real (pip, entry points) and discovered like first-party ones.

Each plugin is pip-installed into its own folder; a subprocess puts the
folders it wants on PYTHONPATH, so discovery reads their entry-point metadata
exactly as it would in a user's environment, and the main environment is
left untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "cookbook" / "plugin-template"
FIXTURES = REPO / "tests" / "fixtures" / "plugins"


def _pip_install(source: Path, target: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plugin-sites")
    return {
        "toy": _pip_install(TEMPLATE, root / "toy"),
        "rival": _pip_install(FIXTURES / "toy_rival", root / "rival"),
        "broken": _pip_install(FIXTURES / "broken", root / "broken"),
    }


def run_python(code: str, paths: list[Path], strict: bool = False, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in {"BESTIARY_STRICT_PLUGINS", "BESTIARY_PREFER"}}
    environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    if strict:
        environment["BESTIARY_STRICT_PLUGINS"] = "1"
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=REPO)


def test_template_plugin_passes_its_own_tests(sites, tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "BESTIARY_STRICT_PLUGINS"}
    environment["PYTHONPATH"] = str(sites["toy"])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        capture_output=True, text=True, env=environment, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_auto_classes_and_pipeline_dispatch_to_the_template(sites, tmp_path):
    code = f"""
import torch, bestiary
from bestiary.auto import AutoConfig, AutoModel
from bestiary_toy.configuration_toy import ToyConfig
from bestiary_toy.modeling_toy import ToyForSequenceClassification
ToyForSequenceClassification(ToyConfig(num_labels=2)).save_pretrained({str(tmp_path)!r})
print(type(AutoConfig.from_pretrained({str(tmp_path)!r})).__name__)
print(type(AutoModel.from_pretrained({str(tmp_path)!r})).__name__)
print(type(bestiary.pipeline("toy-scoring", model={str(tmp_path)!r})).__name__)
"""
    result = run_python(code, [sites["toy"]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ToyConfig", "ToyModel", "ToyScoringPipeline"]


def test_two_distributions_claiming_one_model_type_are_ambiguous(sites):
    code = """
from bestiary.registry import get_registry
try:
    get_registry().architecture("toy")
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    result = run_python(code, [sites["toy"], sites["rival"]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("AmbiguousProviderError")
    assert "bestiary-toy " in result.stdout and "bestiary-toy-rival" in result.stdout
    assert "BESTIARY_PREFER" in result.stdout  # says how to choose

    chosen = run_python(
        "from bestiary.registry import get_registry; print(get_registry().architecture('toy').provider.distribution)",
        [sites["toy"], sites["rival"]],
        BESTIARY_PREFER="toy=bestiary-toy",
    )
    assert chosen.stdout.strip() == "bestiary-toy", chosen.stderr


def test_a_plugin_that_raises_on_import_is_reported_not_fatal(sites):
    code = """
import bestiary
from bestiary.registry import get_registry
rows = bestiary.list_architectures()
print("llama" in {r["model_type"] for r in rows})
print([f.plugin for f in get_registry().failures])
try:
    get_registry().architecture("nonexistent")
except Exception as exc:
    print(exc)
"""
    result = run_python(code, [sites["broken"]])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "['broken']"
    assert "failed to load" in lines[2] and "nonexistent-dependency" in lines[2]
    assert "failed to load" in result.stderr  # logged as a warning


def test_strict_mode_makes_plugin_failures_fatal(sites):
    result = run_python("import bestiary; bestiary.list_architectures()", [sites["broken"]], strict=True)
    assert result.returncode != 0
    assert "broken" in result.stderr and "BESTIARY_STRICT_PLUGINS" in result.stderr
