"""Process identity comes from the launcher's environment once, and is checked."""

from __future__ import annotations

import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.train.world import World, check_group


def test_identity_from_torchrun_environment():
    assert World.from_env({}) == World(0, 1, 0)
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500"})
    assert (world.rank, world.world_size, world.local_rank, world.is_main, world.distributed) == (3, 4, 1, False, True)
    assert world.device("cuda") == torch.device("cuda", 1)  # one GPU per local rank
    assert world.device("cuda:0") == torch.device("cuda", 0) and world.device("cpu") == torch.device("cpu")
    assert World().device("cuda") == torch.device("cuda")


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"rank=2, world_size=2.*expected 0 <= rank < world_size"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, r"must be integers; found \{'RANK': 'x'"),
    ],
    ids=["rank-out-of-range", "not-a-number"],
)
def test_bad_identity_is_refused(env, text):
    with pytest.raises(ConfigError, match=text):
        World.from_env(env)


def test_training_as_a_rank_needs_its_process_group():
    with pytest.raises(ConfigError, match="rank 1 of 2 needs the default process group of that world; found none"):
        check_group(World(1, 2, 1))
