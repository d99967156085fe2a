"""Distillation schemes beyond one offline teacher and one student, each a pipeline ``method`` for ``kdcache run``:

* ``lwf``: Learning without Forgetting, the old network's outputs on the new task cached in stage one;
* ``rocket``: Rocket Launching, online co-training of a booster and a light net, then the booster cached;
* ``selfkd``: born-again self-distillation, each generation cached for the next.

See docs/schemes.md.
"""

from __future__ import annotations

from kdcache.schemes import lwf as _lwf  # noqa: F401  (registers lwf)
from kdcache.schemes import rocket as _rocket  # noqa: F401  (registers rocket)
from kdcache.schemes import selfkd as _selfkd  # noqa: F401  (registers selfkd)
from kdcache.schemes.base import SCHEMES, Phase, Scheme, run_scheme

__all__ = ["SCHEMES", "Phase", "Scheme", "run_scheme"]
