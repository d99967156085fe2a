"""Distillation schemes beyond one offline teacher and one student, each a pipeline ``method`` for ``kdcache run``:

* ``lwf``: Learning without Forgetting, the old network's outputs on the new task cached in stage one;
* ``rocket``: Rocket Launching, online co-training of a booster and a light net, then the booster cached;
* ``selfkd``: born-again self-distillation, each generation cached for the next.

Importing this package registers them in :data:`kdcache.pipeline.methods.METHODS`. See docs/schemes.md.
"""

from kdcache.pipeline.schemes.base import Phase
from kdcache.pipeline.schemes.lwf import LwFPipeline, run_lwf
from kdcache.pipeline.schemes.rocket import RocketPipeline, run_rocket
from kdcache.pipeline.schemes.selfkd import SelfKDPipeline, run_selfkd

__all__ = ["LwFPipeline", "Phase", "RocketPipeline", "SelfKDPipeline", "run_lwf", "run_rocket", "run_selfkd"]
