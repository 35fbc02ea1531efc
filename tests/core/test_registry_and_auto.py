"""Registry behaviour, Auto classes, runtime registration, the catalog and import cost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from torch import nn

import bestiary
from bestiary import auto
from bestiary.config import Config
from bestiary.errors import InvalidReferenceError, NotRegisteredError, ReferenceImportError
from bestiary.modeling import PreTrainedModel
from bestiary.outputs import BaseModelOutput, ModelOutput
from bestiary.registry import ArchitectureSpec, Registry, check_reference, get_registry, import_reference
from bestiary.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]


def test_every_transformers_auto_class_exists():
    for name in [
        "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
        "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModelForQuestionAnswering",
        "AutoModelForMultipleChoice", "AutoModelForNextSentencePrediction", "AutoModelForTextEncoding",
        "AutoModelForPreTraining", "AutoModelForImageClassification", "AutoBackbone",
        "AutoModelForKeypointDetection", "AutoModelForMaskGeneration", "AutoModelForImageTextToText",
        "AutoModelForVision2Seq", "AutoModelForCTC", "AutoModelForSpeechSeq2Seq", "AutoModelForAudioClassification",
        "AutoModelForObjectDetection", "AutoModelForSemanticSegmentation", "AutoModelForInstanceSegmentation",
        "AutoModelForUniversalSegmentation", "AutoModelForDepthEstimation",
        "AutoModelForZeroShotImageClassification", "AutoModelForZeroShotObjectDetection",
    ]:
        assert hasattr(bestiary, name), name
    assert len({task.auto_class for task in TASKS}) == len(TASKS)


def test_malformed_reference_fails_at_registration():
    with pytest.raises(ValueError, match="package.module:ClassName"):
        ArchitectureSpec(model_type="x", config="not a reference")
    with pytest.raises(InvalidReferenceError):
        check_reference("module.without.colon")
    with pytest.raises(ValueError, match="unknown task"):
        ArchitectureSpec(model_type="x", config="a.b:C", models={"causal-llm": "a.b:D"})


def test_import_failure_is_distinct_from_not_registered():
    with pytest.raises(ReferenceImportError, match="registered but failed to import") as caught:
        import_reference("bestiary_nonexistent_module.sub:Thing")
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    registry = Registry()
    with pytest.raises(NotRegisteredError):
        registry.architecture("no-such-type")


def test_a_task_the_architecture_lacks(tmp_path):
    auto.AutoConfig.for_model("llama", hidden_size=16, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(NotRegisteredError) as caught:
        auto.AutoModelForMaskGeneration.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "mask-generation" in message and "causal-lm" in message


def test_same_registration_twice_is_a_noop_and_override_wins(caplog):
    registry = Registry()
    registry._discovered = True
    spec = ArchitectureSpec(model_type="dup", config="a.b:C")
    from bestiary.registry import Provider

    registry._add(registry._architectures, "dup", spec, Provider("p", "dist-a"))
    registry._add(registry._architectures, "dup", spec, Provider("p", "dist-a"))
    assert len(registry._architectures["dup"]) == 1
    strong = ArchitectureSpec(model_type="dup", config="a.b:D", override=True)
    registry._add(registry._architectures, "dup", strong, Provider("q", "dist-b"))
    assert registry.architecture("dup").spec.config == "a.b:D"
    assert "overrides" in caplog.text


class ScriptConfig(Config):
    model_type: ClassVar[str] = "script-model"
    width: int = 4


class ScriptModel(PreTrainedModel):
    config_class = ScriptConfig

    def __init__(self, config: ScriptConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x: torch.Tensor) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.proj(x))


def test_register_a_model_defined_in_a_script(tmp_path):
    auto.AutoConfig.register("script-model", ScriptConfig, exist_ok=True)
    auto.AutoModel.register(ScriptConfig, ScriptModel, exist_ok=True)
    model = ScriptModel(ScriptConfig())
    model.save_pretrained(tmp_path)
    loaded = auto.AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, ScriptModel)
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x).last_hidden_state, model(x).last_hidden_state)
    assert isinstance(auto.AutoConfig.from_pretrained(tmp_path), ScriptConfig)


def test_model_output_access():
    from bestiary.outputs import CausalLMOutputWithPast

    out = CausalLMOutputWithPast(logits=torch.ones(1), hidden_states=(torch.zeros(1),))
    assert out.logits is out["logits"] is out[0]
    assert out.keys() == ["logits", "hidden_states"] and len(out.to_tuple()) == 2
    assert "loss" not in out and out.get("loss", 3) == 3
    with pytest.raises(KeyError):
        out["loss"]
    assert isinstance(out, ModelOutput)


def test_catalog_matches_installed_first_party_plugins():
    catalog = yaml.safe_load((REPO / "registry.yaml").read_text())
    registry = get_registry()
    by_distribution: dict[str, set[str]] = {}
    for row in registry.list_architectures():
        by_distribution.setdefault(row["distribution"], set()).add(row["model_type"])
    pipelines: dict[str, set[str]] = {}
    for info in registry.plugins.values():
        pipelines.setdefault(info.distribution, set()).update(info.pipelines)
    assert catalog["plugins"], "registry.yaml lists no plugin"
    for entry in catalog["plugins"]:
        distribution = entry["distribution"]
        assert distribution in by_distribution or distribution in pipelines, f"{distribution} is not installed"
        assert set(entry.get("model_types", [])) == by_distribution.get(distribution, set()), distribution
        assert set(entry.get("pipelines", [])) == pipelines.get(distribution, set()), distribution
    first_party = {e["distribution"] for e in catalog["plugins"]}
    for distribution in by_distribution:
        if distribution.startswith("bestiary") and distribution != "<runtime>":
            assert distribution in first_party, f"{distribution} is missing from registry.yaml"


def _fresh_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return result.stdout.strip()


def test_import_bestiary_imports_no_torch_and_no_plugin():
    code = (
        "import sys, bestiary; "
        "print('torch' in sys.modules, any(m.startswith('bestiary_') for m in sys.modules), 'pydantic' in sys.modules)"
    )
    assert _fresh_python(code) == "False False False"


def test_listing_architectures_imports_no_torch_and_no_model_code():
    code = (
        "import sys, bestiary; rows = bestiary.list_architectures(); "
        "print(len(rows) >= 3, 'torch' in sys.modules, "
        "[m for m in sys.modules if m.startswith('bestiary_') and '.' in m and not m.endswith('.plugin')])"
    )
    assert _fresh_python(code) == "True False []"
