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


def test_pt_state_dicts_load_with_weights_only(tmp_path) -> None:
    model = _model(0)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    state = load_state_dict(tmp_path / "m.pt")
    assert torch.equal(state["0.weight"], model[0].weight)


def test_missing_and_mismatched_checkpoints_are_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist; train the model first or fix the path"):
        load_state_dict(tmp_path / "absent.safetensors")
    path = save_model(_model(0), tmp_path / "m.safetensors", spec={})
    with pytest.raises(
        CheckpointError, match=r"(?s)does not fit Linear:.*Missing key.*\"weight\".*Unexpected key.*\"0\.weight\""
    ):
        load_model(torch.nn.Linear(4, 2), path)
