"""Class subsets: the samples of some classes, relabelled in the listed order, usable as a pipeline data option."""

from __future__ import annotations

import numpy as np
import pytest

from kdcache.datasets import ClassSubset, TensorDataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.errors import ConfigError
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import load_split
from tests.conftest import pipeline_dict


def test_samples_of_the_classes_keep_their_order_and_are_relabelled(digits_train):
    task = ClassSubset(digits_train, [7, 5])
    labels = digits_train.all_labels()
    expected = np.flatnonzero((labels == 7) | (labels == 5))
    assert np.array_equal(task.indices, expected)
    assert np.array_equal(task.all_labels(), np.where(labels[expected] == 7, 0, 1))
    inputs, batch_labels = task.get_batch(np.array([3, 0]))
    base_inputs, _ = digits_train.get_batch(expected[[3, 0]])
    assert np.array_equal(inputs.numpy(), base_inputs.numpy())
    assert batch_labels.tolist() == task.all_labels()[[3, 0]].tolist()
    assert len(task) == int((labels == 7).sum() + (labels == 5).sum()) == 252  # 125 sevens + 127 fives


def test_fingerprint_tells_tasks_apart(digits_train):
    old, new = ClassSubset(digits_train, [0, 1, 2, 3, 4]), ClassSubset(digits_train, [5, 6, 7, 8, 9])
    assert old.describe()["classes"] == [0, 1, 2, 3, 4]
    assert dataset_fingerprint(old, num_classes=5)["digest"] != dataset_fingerprint(new, num_classes=5)["digest"]


@pytest.mark.parametrize(
    ("classes", "message"),
    [([3, 11], r"classes \[11\] have no samples in split 'train', whose labels are \[0, 1, 2"), ([2, 2], "distinct")],
    ids=["absent-class", "repeated-class"],
)
def test_bad_class_lists_are_explained(digits_train, classes, message):
    with pytest.raises(ConfigError, match=message):
        ClassSubset(digits_train, classes)


def test_masks_cannot_be_split_by_class():
    import torch

    masks = TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, 2, 2), split="train", source={"kind": "seg"})
    with pytest.raises(ConfigError, match=r"one class label per sample.*segmentation masks"):
        ClassSubset(masks, [0, 1])


def test_data_classes_option_selects_the_task_in_any_pipeline(tmp_path):
    cfg = parse_pipeline(pipeline_dict(tmp_path, data__classes=[5, 6, 7, 8, 9], data__num_classes=5))
    train = load_split(cfg, "train")
    assert len(train) == 240 and set(train.all_labels().tolist()) == {0, 1, 2, 3, 4}  # cut after selecting
    with pytest.raises(ConfigError, match=r"classes lists 5 classes but num_classes is 10"):
        parse_pipeline(pipeline_dict(tmp_path, data__classes=[5, 6, 7, 8, 9]))
