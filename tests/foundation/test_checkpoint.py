"""Model checkpoints load without pickle: safetensors natively, ``.pt`` state dicts only with ``weights_only=True``;
a checkpoint that does not fit the model is an error naming the missing and unexpected keys."""

from __future__ import annotations

import pytest
import torch

from kdcache.checkpoint import load_model, load_state_dict, read_spec, save_model
from kdcache.errors import CheckpointError


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_safetensors_round_trip_with_its_spec(tmp_path) -> None:
    model = _model(0)
    path = save_model(model, tmp_path / "m.safetensors", spec={"arch": "mlp", "hidden": 8})
    loaded = load_model(_model(1), path)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert read_spec(path) == {"arch": "mlp", "hidden": 8}
    assert not list(tmp_path.glob(".*partial"))  # written through a temp file, renamed into place


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    ],
    ids=["plain", "state_dict-wrapper", "model-wrapper", "ddp-prefix", "wrapped-ddp"],
)
def test_pt_checkpoints_load_with_weights_only_in_the_common_wrappers(tmp_path, wrap) -> None:
    model = _model(0)
    torch.save(wrap(model.state_dict()), tmp_path / "m.pth")
    loaded = load_model(_model(1), tmp_path / "m.pth")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert read_spec(tmp_path / "m.pth") == {}  # no safetensors header to read: never a SafetensorError


def test_a_pt_file_that_is_not_a_state_dict_is_a_checkpoint_error(tmp_path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds list, not a state dict of tensors"):
        load_state_dict(tmp_path / "list.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"is not a readable safetensors file"):
        read_spec(tmp_path / "broken.safetensors")


def test_missing_and_mismatched_checkpoints_are_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist; train the model first or fix the path"):
        load_state_dict(tmp_path / "absent.safetensors")
    path = save_model(_model(0), tmp_path / "m.safetensors", spec={})
    with pytest.raises(
        CheckpointError, match=r"does not fit Linear: missing keys \(2\): bias, weight; unexpected keys"
    ):
        load_model(torch.nn.Linear(4, 2), path)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with pytest.raises(
        CheckpointError, match=r"shapes \(checkpoint vs model\) \(3\): 0\.weight \(8, 4\) vs \(5, 4\), 0\.bias"
    ):
        load_model(wider, path)
