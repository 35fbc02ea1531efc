"""The template's own tests: run them with pytest after `pip install -e .`."""

from __future__ import annotations

import subprocess
import sys

import torch

import bestiary
from bestiary.auto import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from bestiary_toy.configuration_toy import ToyConfig
from bestiary_toy.modeling_toy import ToyForSequenceClassification


def test_the_plugin_is_discovered():
    assert "toy" in {row["model_type"] for row in bestiary.list_architectures()}


def test_round_trip_through_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = ToyForSequenceClassification(ToyConfig(num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ToyConfig)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "ToyModel"
    assert type(AutoTokenizer.from_pretrained(tmp_path)).__name__ == "ToyTokenizer"


def test_pipeline_dispatches_to_the_plugin(tmp_path):
    ToyForSequenceClassification(ToyConfig(num_labels=2)).save_pretrained(tmp_path)
    scorer = bestiary.pipeline("toy-scoring", model=str(tmp_path))
    result = scorer("hello")
    assert result["label"] in {"LABEL_0", "LABEL_1"} and 0.0 <= result["score"] <= 1.0


def test_plugin_module_does_not_import_torch():
    code = "import sys, bestiary_toy.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
