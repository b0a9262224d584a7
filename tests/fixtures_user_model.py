"""A user model for the `model.custom_class` plug-in tests: `fixtures_user_model:TinyNet`."""

from __future__ import annotations

import math

from torch import nn


class TinyNet(nn.Module):
    """Called the way raylane calls every user model: Class(input_shape=, num_classes=, **kw)."""

    def __init__(self, *, input_shape: list[int], num_classes: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features):
        return self.net(features)


class NotAModule:
    """Importable, but not an nn.Module: build_model must refuse it."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
