"""A shared backbone with named heads, each addressable by module path (``heads.old``, ``heads.booster``).

Two schemes need one network with several outputs: Learning without Forgetting (shared θs, an old-task head θo and a
new-task head θn) and Rocket Launching (shared lower layers, a booster branch and a light branch). Every head runs on
every forward pass, so a loss can read any head through :class:`kdcache.capture.LayerCapture` while the network
answers with one of them (what ``ce`` and evaluation see).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kdcache.capture import find_module
from kdcache.errors import ConfigError

CONCAT = "concat"


class MultiHeadNet(nn.Module):
    """``backbone`` then every module of ``heads``; returns the logits of head ``output``, or with ``concat`` all
    heads' logits concatenated in order (one classifier over the union of the heads' classes).

    >>> net = MultiHeadNet(backbone, {"old": nn.Linear(128, 5), "new": nn.Linear(128, 5)}, output="new")  # doctest: +SKIP
    >>> with net.answering("old"):
    ...     old_logits = net(x)
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], *, output: str) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("a MultiHeadNet needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.output = self._check(output)

    def _check(self, output: str) -> str:
        if output != CONCAT and output not in self.heads:
            raise ConfigError(f"no head {output!r}; this network has heads {list(self.heads)} (or {CONCAT!r})")
        return output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.backbone(x)
        outputs = [(name, head(shared)) for name, head in self.heads.items()]
        if self.output == CONCAT:
            return torch.cat([logits for _, logits in outputs], dim=1)
        return dict(outputs)[self.output]

    @contextmanager
    def answering(self, output: str) -> Iterator[MultiHeadNet]:
        """Answer with head ``output`` (or ``concat``) inside the block, e.g. to evaluate the old task."""
        previous, self.output = self.output, self._check(output)
        try:
            yield self
        finally:
            self.output = previous

    def keep(self, names: list[str], *, output: str | None = None) -> MultiHeadNet:
        """A network made of this one's backbone and the heads ``names`` (modules shared, not copied): the light net
        alone, or the booster as a teacher."""
        if missing := [n for n in names if n not in self.heads]:
            raise ConfigError(f"no head(s) {missing}; this network has heads {list(self.heads)}")
        return MultiHeadNet(self.backbone, {n: self.heads[n] for n in names}, output=output or names[0])

    @classmethod
    def from_classifier(cls, model: nn.Module, classifier: str, head: str) -> MultiHeadNet:
        """Turn a single-head network into a backbone and one named head: the module at path ``classifier`` (e.g.
        ``fc``) moves to ``heads.<head>`` with its weights, and an identity takes its place in the backbone."""
        module = find_module(model, classifier)
        parent, _, leaf = classifier.rpartition(".")
        setattr(find_module(model, parent) if parent else model, leaf, nn.Identity())
        return cls(model, {head: module}, output=head)

    def add_linear_head(self, name: str, classes: int) -> nn.Linear:
        """A new randomly initialised linear head fed like the existing linear heads (LwF's θn)."""
        if name in self.heads:
            raise ConfigError(f"head {name!r} already exists; heads are {list(self.heads)}")
        widths = {h.in_features for h in self.heads.values() if isinstance(h, nn.Linear)}
        if len(widths) != 1:
            raise ConfigError(f"cannot infer the feature width of a new head from heads {list(self.heads)}")
        self.heads[name] = head = nn.Linear(widths.pop(), classes)
        return head
