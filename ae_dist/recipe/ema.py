"""An exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * weights`` after each
applied optimizer step, one fused ``_foreach_lerp_`` over every tensor (float tensors; others are copied).

It lives in a copy of the unwrapped model, so it is evaluated, drawn and saved like the model itself:
its state_dict goes into each checkpoint (``ema``) and, at the end, into ``RUN/model-ema.pt``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        ours, theirs = self.model.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        floats = [key for key, value in ours.items() if value.is_floating_point()]
        self.averaged = [ours[key].data for key in floats]
        self.source = [theirs[key].data for key in floats]
        self.copied = [(ours[key].data, theirs[key].data) for key in ours if key not in floats]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.averaged, self.source, 1.0 - self.decay)
        for mine, theirs in self.copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)  # copies in place: the pairs above stay valid
