"""FSP matrices: the "flow of solution procedure" between two layers (Yim et al., CVPR 2017).

G(x) = F_a(x)^T F_b(x) / (h · w)  (Yim et al., Eq. 2), where F_a, F_b are the two feature maps flattened over the
h × w spatial positions, so G is ``c_a × c_b``. When the maps differ in size the larger is average-pooled to the
smaller (as between ResNet stages). :func:`fsp_matrix` is the single implementation, used for the teacher in stage
one and for the live student in stage two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from kdcache.capture import ModelOutputs
from kdcache.errors import ConfigError
from kdcache.names import check_safe_name
from kdcache.registry import LazyModule
from kdcache.targets.base import TARGETS
from kdcache.targets.floats import FloatArrayParams, FloatArrayTarget

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, c_a, c_b)`` FSP matrices of two ``(B, c, h, w)`` maps; the larger map is pooled to the smaller."""
    if a.dim() != 4 or b.dim() != 4:
        raise ConfigError(f"FSP needs 4-D feature maps (B, C, H, W); got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    a = F.adaptive_avg_pool2d(a, size) if a.shape[2:] != size else a
    b = F.adaptive_avg_pool2d(b, size) if b.shape[2:] != size else b
    return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / (size[0] * size[1])


class FSPParams(FloatArrayParams):
    layers: tuple[str, str] = Field(description="module paths of the two layers, e.g. [layer1, layer2]")


@TARGETS.register("fsp")
class FSPTarget(FloatArrayTarget):
    """FSP matrix between two teacher layers, stored ``(c_a, c_b)`` per sample as ``fsp/<a>__<b>``."""

    kind = "fsp"
    Params = FSPParams
    params: FSPParams

    @property
    def name(self) -> str:
        a, b = (check_safe_name(layer, what="layer") for layer in self.params.layers)
        return f"fsp/{a}__{b}"

    def teacher_layers(self) -> list[str]:
        return list(self.params.layers)

    def axes(self, sample_shape: tuple[int, ...]) -> tuple[str, ...]:
        return ("channel_a", "channel_b")

    def meaning(self) -> str:
        a, b = self.params.layers
        return f"FSP matrix G = F_a^T F_b / (h*w) between teacher layers {a} and {b} (Yim et al. 2017)"

    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        a, b = self.params.layers
        return fsp_matrix(outputs.features[a].float(), outputs.features[b].float())
