"""Intermediate activations: feature maps (FitNets hints, PSPNet aux-head outputs) and per-sample embeddings.

``features/<layer>`` keeps a layer's output, optionally average-pooled to a fixed spatial size before storage.
``embedding/<layer>`` keeps one vector per sample (a 4-D map is globally average-pooled) for relation losses
such as RKD, whose pairwise terms are computed per batch in stage two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from kdcache.capture import ModelOutputs
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


class LayerParams(FloatArrayParams):
    layer: str = Field(description="module path of the layer, e.g. layer3 or aux")


class FeaturesParams(LayerParams):
    pool: tuple[int, int] | None = Field(None, description="average-pool the map to (h, w) before storage")


class _LayerTarget(FloatArrayTarget):
    """A float array derived from one layer, named ``<prefix>/<layer>``."""

    prefix: str
    params: LayerParams

    @property
    def name(self) -> str:
        return f"{self.prefix}/{check_safe_name(self.params.layer, what='layer')}"

    def teacher_layers(self) -> list[str]:
        return [self.params.layer]


@TARGETS.register("features")
class FeaturesTarget(_LayerTarget):
    """A layer's output map ``(C, H, W)`` (or vector), optionally pooled to ``pool`` = (h, w)."""

    kind = "features"
    prefix = "features"
    Params = FeaturesParams
    params: FeaturesParams

    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        value = outputs.features[self.params.layer].float()
        if self.params.pool is not None and value.dim() == 4:
            value = F.adaptive_avg_pool2d(value, self.params.pool)
        return value


@TARGETS.register("embedding")
class EmbeddingTarget(_LayerTarget):
    """A per-sample vector ``(D,)``: the layer's output, globally average-pooled if it is a map."""

    kind = "embedding"
    prefix = "embedding"
    Params = LayerParams

    def axes(self, sample_shape: tuple[int, ...]) -> tuple[str, ...]:
        return ("feature",)

    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        return embedding_of(outputs.features[self.params.layer])


def embedding_of(value: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` from a layer output: maps are globally average-pooled, anything else is flattened."""
    value = value.float()
    if value.dim() == 4:
        value = value.mean(dim=(2, 3))
    return value.flatten(1)
