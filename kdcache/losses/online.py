"""Online co-training losses: terms between two parts of the same student network, with no cached teacher.

A teacher that learns alongside its student has no fixed outputs to precompute; these terms read both sides from the
live network (docs/schemes.md says how the cache is used around such methods).
"""

from __future__ import annotations

import torch
from pydantic import Field

from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs


class RocketHintParams(LossParams):
    booster_layer: str = Field(description="module path of the booster's logits, e.g. heads.booster")
    light_layer: str | None = Field(None, description="module path of the light net's logits (default: the output)")
    gradient_block: bool = Field(True, description="the hint does not update the booster (its logits are detached)")


def logit_hint(light: torch.Tensor, booster: torch.Tensor, *, gradient_block: bool) -> torch.Tensor:
    """‖l(x) − z(x)‖²₂ per sample, averaged over the batch; with ``gradient_block`` z(x) is a constant."""
    guide = booster.detach() if gradient_block else booster
    return (light.float() - guide.float()).pow(2).sum(dim=1).mean()


@LOSSES.register("rocket_hint")
class RocketHint(LossTerm):
    """Rocket Launching's hint (Zhou et al., AAAI 2018): the λ‖l(x) − z(x)‖²₂ term of the joint objective
    L(x; W_S, W_L, W_B) = H(y, p(x)) + H(y, q(x)) + λ‖l(x) − z(x)‖²₂, between the light net's logits l and the
    booster's logits z (the paper's best hint: MSE of the logits before softmax), computed on the live network. With the paper's gradient block (default) the booster
    side is detached, so the hint updates the light net and the shared lower layers (through l) but never the
    booster's own parameters W_B; both nets' cross-entropies are separate ``ce`` terms (``student_layer`` picks the
    booster head).
    """

    Params = RocketHintParams
    params: RocketHintParams

    def student_layers(self) -> list[str]:
        return [self.params.booster_layer, *([self.params.light_layer] if self.params.light_layer else [])]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        light = out.logits if self.params.light_layer is None else out.features[self.params.light_layer]
        booster = out.features[self.params.booster_layer]
        return logit_hint(light, booster, gradient_block=self.params.gradient_block)
