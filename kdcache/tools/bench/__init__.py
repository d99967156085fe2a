"""``kdcache bench``: what a cached teacher costs and saves on this machine, measured side by side in one run.

Figures (docs/benchmarks.md explains the method):

1. stage-two step time: student-only vs cached KD vs online KD (:mod:`kdcache.tools.bench.steps`);
2. stage-one throughput vs bare teacher inference (:mod:`kdcache.tools.bench.stage_one`);
3. target read rate in stage-two order vs a numpy memmap of the same bytes (:mod:`kdcache.tools.bench.reads`);
4. bytes per sample and peak resident memory (:mod:`kdcache.tools.bench.memory`);
5. figure 3 at two store sizes, in and out of the page cache (:mod:`kdcache.tools.bench.reads`);
7. writes: the same rows through kdcache's writer path, h5py, a memmap, safetensors and zarr
   (:mod:`kdcache.tools.bench.writes`).

Variants run interleaved in rounds and report medians with their spread (:mod:`kdcache.tools.bench.rounds`); only
ratios measured in the same run are compared.
"""

from kdcache.tools.bench.settings import BenchSettings, default_threads
from kdcache.tools.bench.suite import run_bench

__all__ = ["BenchSettings", "default_threads", "run_bench"]
