"""What stage one, stage two and the tools use of views: the one interface image and token views both implement.

:class:`~kdcache.views.ViewTransform` (images: normalisation, kdcache's ops, a torchvision pipeline, mixing) and
:class:`~kdcache.views.TokenViews` (a language model's token ids, unchanged) are both :class:`Views`, so every caller
is typed against this protocol and takes either kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from kdcache.errors import ConfigError

if TYPE_CHECKING:
    from kdcache.datasets.base import SampleDataset
    from kdcache.views.transform import Images, ViewBatch


class Views(Protocol):
    """The views of a dataset: ``count`` per sample, replayable from ``(seed, sample, view)`` alone."""

    @property
    def count(self) -> int:
        """Views per sample (view 0 is the eval view)."""
        ...

    @property
    def seed(self) -> int:
        """The seed every view's random numbers are keyed by (recorded in the spec)."""
        ...

    @property
    def param_names(self) -> list[str]:
        """The columns of ``views/params``: the numbers drawn for each (sample, view); empty when none are drawn."""
        ...

    @property
    def seeded_code(self) -> bool:
        """Whether views run code whose random numbers are internal, so stage one checks the replay first."""
        ...

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest."""
        ...

    def eval_view(self) -> Views:
        """The views test-time evaluation sees: one view, no augmentation."""
        ...

    def batch(self, dataset: SampleDataset, indices: np.ndarray, view_ids: np.ndarray) -> ViewBatch:
        """Read samples ``indices`` and make their views ``view_ids``, with everything that made them."""
        ...

    def __call__(self, inputs: Images, indices: np.ndarray | None, view_ids: np.ndarray | None) -> torch.Tensor:
        """Model inputs for raw inputs of samples ``indices`` under views ``view_ids`` (view 0 when not given)."""
        ...


def check_replayable(views: Views, dataset: SampleDataset, samples: int = 4) -> None:
    """Refuse views that do not replay: the same (seed, sample, view) must give the same pixels twice. Run by stage
    one before anything is cached, on the first ``samples`` samples and their last view."""
    count = min(samples, len(dataset))
    if count == 0:
        return
    indices = np.arange(count, dtype=np.int64)
    view_ids = np.full(count, views.count - 1, dtype=np.int64)
    first, second = views.batch(dataset, indices, view_ids).inputs, views.batch(dataset, indices, view_ids).inputs
    if not torch.equal(first, second):
        bad = int(torch.nonzero((first != second).flatten(1).any(dim=1))[0])
        raise ConfigError(
            f"the view transform is not replayable: view {int(view_ids[bad])} of sample {bad} came out different "
            "twice under the same (seed, sample, view). A step draws from a random source kdcache does not seed "
            "(numpy.random.default_rng(), random.SystemRandom, os.urandom, time, a torch.Generator of its own); make "
            "it draw from torch's global generator, as torchvision v2 transforms do, or compute it in the dataset"
        )
