"""tests/README.md stays complete: every kdcache module appears in it, so a new module gets its tests named."""

from __future__ import annotations

from tests.conftest import ROOT


def test_every_kdcache_module_appears_in_the_tests_readme() -> None:
    text = (ROOT / "tests" / "README.md").read_text()
    modules = []
    for path in sorted((ROOT / "kdcache").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    missing = [m for m in modules if f"`{m}`" not in text]
    assert missing == [], f"add these modules and the tests that cover them to tests/README.md: {missing}"
