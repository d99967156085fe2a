"""The sample audit keeps what the final model trained on: steps undone by a crash are left out."""

from __future__ import annotations

import numpy as np

from kdcache.train.samplelog import SampleLog, consumed_samples
from kdcache.train.world import World


def batches(epoch: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(epoch).permutation(10), 5)  # 5 steps of 2 samples


def test_steps_redone_after_a_resume_count_once(tmp_path):
    (tmp_path / "rank1.jsonl").write_text('{"run": 0, "event": "step", "epoch": 0, "step": 0, "indices": [1]}\n')
    crashed = SampleLog(tmp_path, World(), fresh=True, epoch=0, step=0)
    assert not (tmp_path / "rank1.jsonl").exists()  # a fresh run drops the files of ranks it does not have
    for step in range(5):
        crashed.record(0, step, batches(0)[step])
    for step in range(3):
        crashed.record(1, step, batches(1)[step])  # then killed; the last checkpoint was after epoch 1, step 1
    crashed.close()
    resumed = SampleLog(tmp_path, World(), fresh=False, epoch=1, step=1)
    for step in range(1, 5):
        resumed.record(1, step, batches(1)[step])
    resumed.close()
    with open(tmp_path / "rank0.jsonl", "a") as f:
        f.write('{"run": 1, "event": "st')  # a line cut short by a crash in mid-write

    epochs = consumed_samples(tmp_path)
    assert sorted(epochs) == [0, 1]
    np.testing.assert_array_equal(epochs[1], np.concatenate(batches(1)))  # steps 1 and 2 counted once, in order
    assert sorted(epochs[0].tolist()) == list(range(10))
    assert (tmp_path / "rank0.jsonl").read_text().count('"event": "step"') == 12  # 5 + 3 + 4 logged
