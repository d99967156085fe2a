"""Stage one: run a frozen teacher once over a dataset and write its targets into a sharded store.

The engine takes objects — a teacher ``nn.Module``, a :class:`~kdcache.datasets.SampleDataset`, views and targets —
or :class:`~kdcache.registry.Factory` import paths for them, and a store location. It never takes a pipeline file and
never trains: a teacher arrives trained. :func:`precompute` runs in this process, :func:`precompute_on_dask` one task
per shard range on a dask cluster; both resume an interrupted run and give byte-identical stores.
"""

from kdcache.precompute.cluster import check_cluster, dask_client
from kdcache.precompute.dask import precompute_on_dask, run_on_dask
from kdcache.precompute.engine import PrecomputeReport, ShardWork, TeacherRun
from kdcache.precompute.job import StageOneJob
from kdcache.precompute.local import precompute, run_local

__all__ = [
    "PrecomputeReport",
    "ShardWork",
    "StageOneJob",
    "TeacherRun",
    "check_cluster",
    "dask_client",
    "precompute",
    "precompute_on_dask",
    "run_local",
    "run_on_dask",
]
