"""Figure 10: how fast a command that needs no torch starts, against an interpreter that only imports torch.

Each variant is a fresh interpreter (what a user waits for when they type the command): ``kdcache --help``, the
bare ``import kdcache.store`` a reader pays, and ``import torch`` as the yardstick; they run interleaved, one of each
per round, so the ratios are paired. A separate, untimed child of each kdcache variant reports which modules it
ended up holding: torch must be absent (the front door and the store layer load it lazily, if ever).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from kdcache.tables import markdown_table
from kdcache.tools.bench.rounds import Variant, interleave, timed
from kdcache.tools.bench.settings import BenchSettings

#: What each variant runs in a fresh interpreter: the console script ``kdcache`` runs ``kdcache.cli:main`` too.
COMMANDS: dict[str, list[str]] = {
    "kdcache --help": ["-m", "kdcache", "--help"],
    "import kdcache.store": ["-c", "import kdcache.store"],
    "import torch": ["-c", "import torch"],
}

#: Run after a variant, in the same interpreter, to report what it loaded (``--help`` exits through SystemExit).
_REPORT = (
    "import runpy, sys\n"
    "sys.argv = {argv!r}\n"
    "try:\n"
    "    runpy.run_module({module!r}, run_name='__main__') if {module!r} else exec({code!r})\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('\\nLOADED', 'torch' in sys.modules, sum(name.split('.')[0] == 'kdcache' for name in sys.modules))\n"
)


def measure_startup(settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Seconds each command takes to start and exit, ratios to ``import torch``, and what the kdcache ones load."""
    variants = {name: _runner(args) for name, args in COMMANDS.items()}
    samples = interleave(variants, rounds=settings.startup_rounds, desc="start time", progress=progress)
    kdcache_variants = [name for name in COMMANDS if name != "import torch"]
    return {
        "seconds": {name: samples.summary(name) for name in COMMANDS},
        "ratio_to_import_torch": {name: samples.ratio(name, "import torch") for name in kdcache_variants},
        "loaded": {name: _loaded(COMMANDS[name]) for name in kdcache_variants},
    }


def _runner(args: list[str]) -> Variant:
    def run() -> float:
        return timed(lambda: subprocess.run([sys.executable, *args], check=True, capture_output=True))

    return run


def _loaded(args: list[str]) -> dict[str, Any]:
    """Whether torch is in ``sys.modules`` after the command, and how many kdcache modules it loaded."""
    module, code = (args[1], "") if args[0] == "-m" else ("", args[1])
    argv = [module or "-c", *args[2:]]
    script = _REPORT.format(argv=argv, module=module, code=code)
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    _, torch_loaded, kdcache_modules = done.stdout.strip().splitlines()[-1].split()
    return {"torch": torch_loaded == "True", "kdcache_modules": int(kdcache_modules)}


def render_startup(startup: dict[str, Any]) -> str:
    """The figure as markdown: seconds per command, the ratio to ``import torch``, and what each loaded."""
    rows = []
    for name, seconds in startup["seconds"].items():
        ratio = startup["ratio_to_import_torch"].get(name)
        loaded = startup["loaded"].get(name)
        rows.append(
            [
                f"`{name}`",
                f"{seconds['median']:.3f} [{seconds['min']:.3f}–{seconds['max']:.3f}]",
                "—" if ratio is None else f"{ratio['median']:.3f}",
                "—" if loaded is None else ("yes" if loaded["torch"] else "no"),
                "—" if loaded is None else str(loaded["kdcache_modules"]),
            ]
        )
    return "#### 10. Start time of commands that need no torch (fresh interpreters)\n\n" + markdown_table(
        ["command", "seconds", "/ import torch", "torch loaded", "kdcache modules"], rows
    )
