"""A detection-style head that builds whichever backbone its config names, through ``load_backbone``.

The head knows nothing about Swin or timm: it reads ``channels`` and
``strides`` from the backbone it gets, puts a 1x1 projection on each
feature map, predicts class scores and boxes per location, and places
anchor centres with the strides. The same head runs on a Swin backbone
(``backbone_config`` dict), a timm backbone (``backbone_config`` with
``model_type="timm_backbone"``) and a timm name (``backbone="resnet18"``,
``use_timm_backbone=True``), saves, and reloads from its own checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
pytest.importorskip("bestiary_swin")
pytest.importorskip("bestiary_timm")

from bestiary.backbone import BackboneHolderConfig, load_backbone  # noqa: E402
from bestiary.errors import HubError  # noqa: E402
from bestiary.modeling import PreTrainedModel  # noqa: E402
from bestiary_swin.configuration_swin import SwinConfig  # noqa: E402
from bestiary_swin.modeling_swin import SwinBackbone  # noqa: E402
from bestiary_timm.configuration_timm_backbone import TimmBackboneConfig  # noqa: E402
from bestiary_timm.modeling_timm_backbone import TimmBackbone  # noqa: E402

SWIN = {"model_type": "swin", "image_size": 64, "embed_dim": 16, "depths": [1, 1, 1], "num_heads": [1, 2, 2],
        "window_size": 4, "out_features": ["stage2", "stage3"]}
TIMM_RESNET = {"model_type": "timm_backbone", "backbone": "resnet18", "out_indices": [2, 3, 4]}


class TinyDetectorConfig(BackboneHolderConfig):
    model_type: ClassVar[str] = "tiny_detector"
    num_classes: int = 3
    hidden: int = 8


class TinyDetector(PreTrainedModel):
    config_class = TinyDetectorConfig
    base_model_prefix = "detector"
    main_input_name = "pixel_values"

    def __init__(self, config: TinyDetectorConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        self.projections = nn.ModuleList(nn.Conv2d(c, config.hidden, 1) for c in self.backbone.channels)
        self.class_head = nn.Conv2d(config.hidden, config.num_classes, 3, padding=1)
        self.box_head = nn.Conv2d(config.hidden, 4, 3, padding=1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(pixel_values).feature_maps
        logits, boxes, centres = [], [], []
        for feature_map, projection, stride in zip(maps, self.projections, self.backbone.strides):
            hidden = projection(feature_map)
            logits.append(self.class_head(hidden).flatten(2).transpose(1, 2))
            boxes.append(self.box_head(hidden).flatten(2).transpose(1, 2).sigmoid())
            ys, xs = torch.meshgrid(
                torch.arange(hidden.shape[-2]), torch.arange(hidden.shape[-1]), indexing="ij"
            )
            centres.append(torch.stack([xs, ys], -1).reshape(-1, 2).add(0.5).mul(stride))
        return {"logits": torch.cat(logits, 1), "boxes": torch.cat(boxes, 1), "anchor_centres": torch.cat(centres)}


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def anchor_count(strides: list[int], size: int = 64) -> int:
    return sum((-(-size // stride)) ** 2 for stride in strides)


@pytest.mark.parametrize(
    ("backbone", "expected_class", "strides", "channels"),
    [
        ({"backbone_config": SWIN}, SwinBackbone, [8, 16], [32, 64]),
        ({"backbone_config": TIMM_RESNET}, TimmBackbone, [8, 16, 32], [128, 256, 512]),
        ({"backbone": "resnet18", "use_timm_backbone": True, "backbone_kwargs": {"out_indices": [-2, -1]}},
         TimmBackbone, [16, 32], [256, 512]),
    ],
    ids=["swin-config", "timm-config", "timm-name"],
)
def test_head_consumes_any_registered_backbone(tmp_path, backbone, expected_class, strides, channels, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        detector = TinyDetector.from_config(TinyDetectorConfig(**backbone)).eval()
    assert isinstance(detector.backbone, expected_class)
    assert detector.backbone.strides == strides and detector.backbone.channels == channels
    if expected_class is TimmBackbone:
        assert "random weights (weights='random')" in caplog.text  # said, never silent
    with torch.no_grad():
        output = detector(pixels())
    assert output["logits"].shape == (2, anchor_count(strides), 3)
    assert output["anchor_centres"].shape == (anchor_count(strides), 2)
    assert output["anchor_centres"][0].tolist() == [strides[0] / 2, strides[0] / 2]

    detector.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if "backbone_config" in backbone:
        assert saved["backbone_config"]["model_type"] == backbone["backbone_config"]["model_type"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reloaded = TinyDetector.from_pretrained(tmp_path)
    assert "random weights" not in caplog.text and "newly initialised" not in caplog.text
    if "backbone_config" in backbone:
        assert isinstance(reloaded.config.backbone_config, (SwinConfig, TimmBackboneConfig))
    with torch.no_grad():
        again = reloaded(pixels())
    for key in ("logits", "boxes"):
        assert torch.equal(output[key], again[key])


def test_loading_a_head_never_fetches_backbone_weights(tmp_path, monkeypatch):
    """use_pretrained_backbone asks for timm's hub weights when building; a checkpoint load uses its own."""
    config = TinyDetectorConfig(backbone_config=TIMM_RESNET, use_pretrained_backbone=True)
    original = timm.create_model

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no hub here")
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(HubError, match="weights='<path to a timm state dict>'"):
        TinyDetector.from_config(config)
    TinyDetector.from_config(config.model_copy(update={"use_pretrained_backbone": False})).save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["use_pretrained_backbone"] = True
    (tmp_path / "config.json").write_text(json.dumps(stored))
    reloaded = TinyDetector.from_pretrained(tmp_path)
    assert reloaded.backbone.weight_source == "checkpoint"


def test_backbone_kwargs_choose_the_stages_of_a_nested_config():
    config = TinyDetectorConfig(backbone_config=SWIN, backbone_kwargs={"out_indices": [1]})
    backbone = load_backbone(config)
    assert backbone.out_features == ["stage1"] and backbone.strides == [4]
    assert isinstance(config.backbone_config, SwinConfig)  # the dict became the registered config class
