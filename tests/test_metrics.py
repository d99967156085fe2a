"""Segmentation metrics against a hand-computed confusion matrix; classification accuracy unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.metrics import Accuracy, ConfusionMatrix, segmentation_scores, task_metric

LABELS = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 0]]])
PREDICTED = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
# rows: true class, columns: predicted class, over the 7 labelled pixels (the 255 pixel, predicted 2, is not counted)
BY_HAND = torch.tensor([[2, 1, 0], [0, 2, 0], [1, 0, 1]])


def one_hot_logits(predicted: torch.Tensor, classes: int) -> torch.Tensor:
    return 5.0 * F.one_hot(predicted, classes).permute(0, 3, 1, 2).float()


def test_confusion_matrix_miou_and_pixel_accuracy_by_hand():
    metric = ConfusionMatrix(3, ignore_index=255)
    metric.update(one_hot_logits(PREDICTED, 3), LABELS)
    assert torch.equal(metric.state(), BY_HAND)
    # IoU_c = TP / (row + column - TP): 2/(3+3-2), 2/(2+3-2), 1/(2+1-1)
    scores = metric.summarise(metric.state())
    assert scores["miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)


def test_classes_absent_from_truth_and_prediction_are_left_out_of_the_mean():
    metric = ConfusionMatrix(5, ignore_index=255)  # classes 3 and 4 appear nowhere
    metric.update(one_hot_logits(PREDICTED, 5), LABELS)
    assert metric.summarise(metric.state())["miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    predicted_only = torch.tensor([[0, 3]])  # class 3 predicted but never true: IoU 0, and it counts
    extra = ConfusionMatrix(5, ignore_index=255)
    extra.update(one_hot_logits(predicted_only[None], 5), torch.tensor([[[0, 0]]]))
    assert extra.summarise(extra.state())["miou"] == pytest.approx((1 / 2 + 0) / 2)


def test_counts_accumulate_over_batches_and_sum_across_processes():
    metric = ConfusionMatrix(3, ignore_index=255)
    for b in range(2):  # the same pixels in two batches of one column pair each
        metric.update(one_hot_logits(PREDICTED[..., 2 * b : 2 * b + 2], 3), LABELS[..., 2 * b : 2 * b + 2])
    assert torch.equal(metric.state(), BY_HAND)
    total = BY_HAND + BY_HAND  # what an all-reduce over two ranks with the same pixels gives
    assert segmentation_scores(total) == segmentation_scores(BY_HAND)


def test_native_logits_are_upsampled_to_the_label_size():
    native = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # left half class 0, right half class 1
    labels = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 0]]])
    metric = ConfusionMatrix(2, ignore_index=255)
    metric.update(native, labels)
    assert torch.equal(metric.state(), torch.tensor([[3, 1], [0, 3]]))
    accuracy = Accuracy(255)
    accuracy.update(native, labels)
    assert (accuracy.correct, accuracy.count) == (6, 7)  # pixel accuracy: the same six of seven labelled pixels


def test_task_metric_picks_by_task_and_labels_out_of_range_are_refused():
    assert isinstance(task_metric("classification", 10), Accuracy)
    classification = task_metric("classification", 3)
    classification.update(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), torch.tensor([1, 2]))
    assert classification.summarise(classification.state()) == {"accuracy": 0.5}
    metric = task_metric("segmentation", 3, 255)
    with pytest.raises(ConfigError, match=r"outside 0\.\.2.*found \[7\].*data.num_classes"):
        metric.update(one_hot_logits(PREDICTED, 3), torch.tensor([[[0, 0, 1, 255], [1, 2, 7, 0]]]))
