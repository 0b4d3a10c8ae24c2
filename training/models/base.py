"""The interface every Striate model exposes (zoo architectures and pretrained backbones alike).

A model is `stem -> stages (named, in order) -> head`. `forward_features` returns the last feature
map, `forward_head(x, pre_logits=True)` the global feature vector (the embedding), and
`forward_stages` every stage's map, so export, feature extraction and Grad-CAM need nothing
architecture-specific.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """`pre_logits` (global pooling, flatten, optional dropout/linear/ReLU) then the final `fc`.

    The exporter writes the vector-Jacobian product of this head as plain ONNX ops for Grad-CAM,
    so `pre_logits` may only hold: AdaptiveAvgPool2d, AdaptiveMaxPool2d, Flatten, Dropout, Linear,
    ReLU, Identity.
    """

    def __init__(self, pre_logits: nn.Sequential, fc: nn.Linear) -> None:
        super().__init__()
        self.pre_logits = pre_logits
        self.fc = fc

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)


class StriateModel(nn.Module):
    """Base class: subclasses set `stem`, `stages` (nn.ModuleDict, in order) and `head`."""

    stem: nn.Module
    stages: nn.ModuleDict
    head: ClassifierHead
    # Set by `create_model` so that a checkpoint can rebuild the model.
    arch_name: str = ""
    arch_kwargs: dict[str, Any]

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    @property
    def num_classes(self) -> int:
        return self.head.fc.out_features

    @property
    def embedding_dim(self) -> int:
        return self.head.fc.in_features

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name, stage in self.stages.items():
            x = stage(x)
            out[name] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages.values():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
