"""A dataset that is not the one the store was built from never gets another sample's targets: one pixel of any
sample, a reorder, a subset, an extension, flipped images, or a dataset that augments inside ``__getitem__`` — through
the Python API, through DataLoader workers and through the CLI. Edits the 16-sample fingerprint cannot see are caught
sample by sample, by the per-sample content digests, with the likely cause named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache import CachedDataset, batch_loader, set_loader_epoch
from kdcache.datasets import Subset
from kdcache.datasets.base import SampleDataset
from kdcache.datasets.fingerprint import CONTENT_PROBES
from kdcache.errors import KdcacheError, SampleMismatchError
from kdcache.store import open_store
from kdcache.views import ViewTransform
from tests.conftest import MEAN, STD, with_changes
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import edited_digits
from tests.helpers import kdcache, with_sets

OUTSIDE_PROBES = 37  # evenly spaced probes over 300 samples: 0, 20, 40, ... ; 37 is none of them


class Edited(SampleDataset):
    """The suite's 300 digits with an edit applied to what ``get_batch`` returns."""

    def __init__(self, base: SampleDataset, edit) -> None:
        self.base, self.edit, self.split = base, edit, base.split

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices):
        inputs, labels = self.base.get_batch(indices)
        return self.edit(np.asarray(indices), inputs.clone(), labels.clone())

    def describe(self):
        return self.base.describe()

    def all_labels(self):
        return self.base.all_labels()


def one_pixel(indices, inputs, labels):
    inputs[indices == OUTSIDE_PROBES, 0, 3, 3] += 1 / 16
    return inputs, labels


def flipped_one(indices, inputs, labels):
    inputs[indices == OUTSIDE_PROBES] = inputs[indices == OUTSIDE_PROBES].flip(-1)
    return inputs, labels


def probes(n: int = 300) -> np.ndarray:
    """The samples the dataset fingerprint hashes (evenly spaced, first and last included)."""
    return np.unique(np.linspace(0, n - 1, num=min(CONTENT_PROBES, n)).round().astype(np.int64))


def random_flip(indices, inputs, labels):  # augments inside __getitem__, away from the probes
    chosen = ~np.isin(indices, probes()) & (torch.rand(len(indices)) < 0.5).numpy()
    inputs[chosen] = inputs[chosen].flip(-1)
    return inputs, labels


def swapped_pair(base: SampleDataset) -> Subset:
    """Two samples of the same label, neither a probe, swapped: labels and probes agree, the order does not."""
    labels = base.all_labels()
    order = np.arange(len(base))
    a = OUTSIDE_PROBES
    b = next(i for i in range(a + 1, len(base)) if labels[i] == labels[a] and i not in probes())
    order[[a, b]] = order[[b, a]]
    return Subset(base, order, tag=base.describe().get("subset", "first-300"))


def api_cases(base: SampleDataset) -> dict[str, tuple[SampleDataset, str]]:
    """Edited datasets and the phrase their refusal must contain."""
    assert OUTSIDE_PROBES not in probes(len(base))
    return {
        "one-pixel": (Edited(base, one_pixel), "no row of the store has this content"),
        "reordered-pair": (swapped_pair(base), "of this dataset is row"),
        "reordered": (Subset(base, np.arange(len(base))[::-1].copy(), tag="first-300"), "different dataset"),
        "subset": (Subset(base, np.arange(len(base) - 1), tag="first-299"), "holds 300 samples"),
        "extended": (Subset(base.base, np.arange(len(base) + 1), tag="first-301"), "holds 300 samples"),
        "flipped-all": (Edited(base, lambda i, x, y: (x.flip(-1), y)), "content_sha256"),
        "flipped-one": (Edited(base, flipped_one), "no row of the store has this content"),
        "augments-inside": (Edited(base, random_flip), "augments or randomises inside __getitem__"),
    }


def every_batch(data: CachedDataset, workers: int) -> None:
    loader = batch_loader(data, batch_size=64, seed=0, num_workers=workers, multiprocessing_context="fork")
    set_loader_epoch(loader, 0)
    for _ in loader:
        pass


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-dataloader-workers"])
@pytest.mark.parametrize("case", ["one-pixel", "reordered-pair", "reordered", "subset", "extended", "flipped-all",
                                  "flipped-one", "augments-inside"])  # fmt: skip
def test_an_edited_dataset_is_refused_through_the_api(case, workers, clean_store, digits_small):
    dataset, phrase = api_cases(digits_small)[case]
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    outcome = Outcome("dataset", f"api-{case}-{workers}w")
    torch.manual_seed(workers)
    with pytest.raises(KdcacheError) as raised:
        data = CachedDataset(dataset, open_store(str(clean_store)), teacher="t8", targets=["logits"], views=views)
        every_batch(data, workers)
    outcome.detected = clear_error(raised.value, str(clean_store), phrase)
    assert record(outcome).passed, (outcome, str(raised.value))


def test_the_override_trains_on_with_a_warning_per_batch(clean_store, digits_small, caplog):
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    dataset, _ = api_cases(digits_small)["one-pixel"]
    data = CachedDataset(dataset, open_store(str(clean_store)), teacher="t8", targets=["logits"], views=views,
                         allow_sample_mismatch=True)  # fmt: skip
    every_batch(data, 0)
    assert "allow_sample_mismatch is set" in caplog.text and f"sample(s) {OUTSIDE_PROBES}" in caplog.text


def pixel_of_sample_37(f) -> None:
    f["train/images"][OUTSIDE_PROBES, 3, 3] = (f["train/images"][OUTSIDE_PROBES, 3, 3] + 5) % 17


def flip_sample_37(f) -> None:
    f["train/images"][OUTSIDE_PROBES] = f["train/images"][OUTSIDE_PROBES][:, ::-1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-dataloader-workers"])
@pytest.mark.parametrize("edit", [pixel_of_sample_37, flip_sample_37], ids=["one-pixel", "flipped-one"])
def test_an_edited_data_file_is_refused_by_the_cli_without_a_traceback(tmp_path, built, edit, workers):
    """From a DataLoader worker too: the error line is kdcache's own message, not torch's re-raise with the worker's
    traceback inside it."""
    path = edited_digits(tmp_path, edit)
    sets = [f"output_dir={built['output_dir']}", f"data.args.path={path}", "student.train.stages.0.epochs=1",
            "data.max_train_samples=240", "data.max_test_samples=120", "cache.shard_samples=128",
            f"student.train.num_workers={workers}"]  # fmt: skip
    config = tmp_path / "pipeline.yaml"
    import yaml

    config.write_text(yaml.safe_dump(with_changes(built)))
    result = kdcache("train", str(config), "--quiet", *with_sets(sets))
    outcome = Outcome("dataset", f"cli-{edit.__name__}-{workers}w")
    outcome.detected = (
        result.returncode == 2 and "kdcache: error:" in result.stderr and "Traceback" not in result.stderr
    )
    outcome.detected &= "DataLoader worker" not in result.stderr and 'File "' not in result.stderr
    outcome.detected &= f"sample(s) {OUTSIDE_PROBES}" in result.stderr and "no row of the store" in result.stderr
    assert record(outcome).passed, (outcome, result.returncode, result.stdout[-500:], result.stderr[-2000:])


def test_a_sample_mismatch_is_a_store_mismatch_for_callers_that_catch_those():
    assert issubclass(SampleMismatchError, KdcacheError) and issubclass(SampleMismatchError, ValueError)
