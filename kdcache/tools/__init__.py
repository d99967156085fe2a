"""Tools over finished stores: inspect, verify (values and recompute), stats, HDF5 export/import, upgrade,
fidelity and bench (docs/api.md, "Sharing and tools").

Names import on first use (PEP 562): most tools need torch, and ``kdcache inspect`` must not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache.registry import lazy_exports

if TYPE_CHECKING:
    from kdcache.tools.bench import BenchSettings, run_bench
    from kdcache.tools.inspect import print_store
    from kdcache.tools.lm_fidelity import pipeline_store_fidelity
    from kdcache.tools.recompute import FidelityReport, recompute_check
    from kdcache.tools.recompute_kinds import Tolerance
    from kdcache.tools.stats import TeacherStats, store_stats
    from kdcache.tools.transfer import export_hdf5, import_hdf5
    from kdcache.tools.upgrade import upgrade_store
    from kdcache.tools.values import verify_problems

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BenchSettings": "kdcache.tools.bench",
        "run_bench": "kdcache.tools.bench",
        "print_store": "kdcache.tools.inspect",
        "pipeline_store_fidelity": "kdcache.tools.lm_fidelity",
        "TeacherStats": "kdcache.tools.stats",
        "store_stats": "kdcache.tools.stats",
        "export_hdf5": "kdcache.tools.transfer",
        "import_hdf5": "kdcache.tools.transfer",
        "upgrade_store": "kdcache.tools.upgrade",
        "verify_problems": "kdcache.tools.values",
        "FidelityReport": "kdcache.tools.recompute",
        "recompute_check": "kdcache.tools.recompute",
        "Tolerance": "kdcache.tools.recompute_kinds",
    },
)

__all__ = [
    "BenchSettings",
    "FidelityReport",
    "TeacherStats",
    "Tolerance",
    "export_hdf5",
    "import_hdf5",
    "pipeline_store_fidelity",
    "print_store",
    "recompute_check",
    "run_bench",
    "store_stats",
    "upgrade_store",
    "verify_problems",
]
