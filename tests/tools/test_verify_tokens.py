"""`verify --recompute` on a token store: top-k and sampled targets are refused with a typed error that points to
the digest scrub, never a traceback."""

from __future__ import annotations

import pytest

from kdcache.errors import ConfigError
from kdcache.precompute import precompute
from kdcache.store import open_cache
from kdcache.targets import build_target
from kdcache.tools.verify import recompute_check
from kdcache.views import TokenViews


@pytest.mark.parametrize("params", [{"k": 4}, {"encoding": "sampled", "samples": 4}], ids=["topk", "sampled"])
def test_recompute_refuses_sparse_token_targets(tmp_path, lm_teacher, lm_train, params):
    path = str(tmp_path / "s.zarr")
    precompute(lm_teacher, lm_train, path, targets=[build_target("token_logits", params)], views=TokenViews(),
               num_classes=300, teacher_name="lm", progress=False)  # fmt: skip
    name = "token_logits_topk" if "k" in params else "token_logits_sampled"
    with pytest.raises(ConfigError, match=f"'{name}' is stored as .*`kdcache verify STORE`"):
        recompute_check(open_cache(path), lm_teacher, lm_train, TokenViews(), teacher_name="lm", pairs=4,
                        progress=False)  # fmt: skip
    assert open_cache(path).verify() == []  # the digest scrub the message points to passes
