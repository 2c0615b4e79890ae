"""An exponential moving average of the weights (Polyak averaging), evaluated in their place.

After every optimizer step::

    theta_ema <- d_t * theta_ema + (1 - d_t) * theta,    d_t = min(decay, (1 + t) / (10 + t))

(t = the number of updates so far). The warm-up of ``d_t`` is the one of TensorFlow's
``ExponentialMovingAverage(num_updates=t)``: early on the average follows the weights
closely instead of being dominated by the pretrained starting point. The average is a
cheap ensemble of the weights along the end of the trajectory; with small fine-tuning sets
it is usually a little better than the last weights and less sensitive to the evaluation step.

Usage in the loop::

    ema = WeightAverage(model, decay=0.999)
    ...; optimizer.step(); ema.update()
    with ema.swapped():        # the model holds the averaged weights inside the block
        evaluate(model); save(model)

Only floating-point parameters with ``requires_grad`` are averaged (frozen ones never change).
Memory: one extra copy of those parameters; time: one fused lerp over them per update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": list(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        for s, saved in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(saved)
        self.updates = int(state["updates"])

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the parameters hold the average; the training weights come back after."""
        for p, s in zip(self.params, self.shadow, strict=True):
            p.data, s.data = s.data, p.data  # swap storages: no copies
        try:
            yield
        finally:
            for p, s in zip(self.params, self.shadow, strict=True):
                p.data, s.data = s.data, p.data
