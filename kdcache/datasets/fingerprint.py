"""The dataset fingerprint a store records: length, source, ordered labels and a content hash of probe samples."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from kdcache.datasets.base import SampleDataset
from kdcache.fingerprint import with_digest

CONTENT_PROBES = 16  # samples hashed for the content fingerprint: evenly spaced, always including the first and last


def dataset_fingerprint(dataset: SampleDataset, *, num_classes: int | None) -> dict[str, Any]:
    """Length, source, ordered labels and a content hash of probe samples: enough to tell two datasets apart."""
    n = len(dataset)
    probes = np.unique(np.linspace(0, n - 1, num=min(CONTENT_PROBES, n)).round().astype(np.int64))
    inputs, _ = dataset.get_batch(probes)
    content = hashlib.sha256()
    for image in inputs:  # one sample at a time: a stacked batch and a list of sizes hash alike
        content.update(image.contiguous().float().numpy().tobytes())
    facts = {
        "source": dataset.describe(),
        "length": n,
        "num_classes": num_classes,
        "labels_sha256": dataset.labels_sha256(),
        "content_sha256": content.hexdigest(),
    }
    if dataset.class_names is not None:
        facts["class_names"] = list(dataset.class_names)
    return with_digest(facts)
