"""Every signature docs/api.md shows is the real one: parameter names, order, kinds and defaults equal
``inspect.signature`` of the object it names.

A signature is an inline code span ``name(params)`` (optionally ``-> type``) whose parameters are all parameter forms
(``x``, ``x=default``, ``*``, ``*args``, ``**options``); a span with a literal or call in a parameter's place is an
example call, not a signature, and is not checked (so is a span starting with ``...``). ``x=...`` says only that
``x`` has a default; a bare ``...`` elsewhere says that more parameters follow, so the rest are not checked. Defaults may be written ``16 GiB`` and
``10 min``. Bare method names (``update(logits, labels)``) are looked up on the entry's first documented object, and
``StoreReader.require(...)`` on the named class; names that resolve to nothing are prose, not checked.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib
import inspect
import re
from typing import Any

import kdcache
from tests.conftest import ROOT

API = ROOT / "docs" / "api.md"
SPAN = re.compile(r"`([^`]+)`")
CALL = re.compile(r"^([A-Za-z_][\w.]*)\((.*)\)(?:\s*->\s*.+)?$", re.S)
SECTION = re.compile(r"^## .*\(`(kdcache[\w.]*)`\)", re.M)
UNITS = [(re.compile(r"(\d+) GiB"), r"(\1 * 1024**3)"), (re.compile(r"(\d+) min\b"), r"_minutes(\1)")]


@dataclasses.dataclass(frozen=True)
class DocSignature:
    line: int
    text: str
    name: str
    params: list[tuple[str, inspect._ParameterKind, ast.expr | None]]  # name, kind, default (None: no default)
    open_ended: bool  # a bare ``...``: more parameters follow


def _parse(name: str, inside: str, line: int, text: str) -> DocSignature | None:
    parts = [p.strip() for p in _split(inside)]
    if parts[0] == "...":
        return None  # `precompute(..., store_tokens=True)`: one argument of a call, not a signature
    open_ended = "..." in parts
    source = ", ".join(p for p in parts if p and p != "...")
    for pattern, replacement in UNITS:
        source = pattern.sub(replacement, source)
    try:
        args = ast.parse(f"def f({source}): pass").body[0].args  # type: ignore[attr-defined]  # a FunctionDef
    except SyntaxError:
        return None  # an example call (`build_target("logits", {})`), not a signature
    P = inspect.Parameter
    positional = [(a.arg, P.POSITIONAL_OR_KEYWORD) for a in args.posonlyargs + args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [(n, k, d) for (n, k), d in zip(positional, defaults, strict=True)]
    if args.vararg:
        params.append((args.vararg.arg, P.VAR_POSITIONAL, None))
    params += [(a.arg, P.KEYWORD_ONLY, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        params.append((args.kwarg.arg, P.VAR_KEYWORD, None))
    if any(_is_illustration(d) for _, _, d in params):
        return None  # `optimizer=OptimizerConfig(...)`: how to call it, not its defaults
    return DocSignature(line, text, name, params, open_ended)


def _split(inside: str) -> list[str]:
    """Top-level comma-separated parts of a parameter list."""
    parts, depth, current = [], 0, ""
    for char in inside:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _is_illustration(default: ast.expr | None) -> bool:
    if default is None or isinstance(default, ast.Constant):
        return False
    return any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(default))


def doc_signatures() -> list[tuple[DocSignature, str | None, list[str]]]:
    """Each signature of api.md with the package of its section and the names shown before it in its entry."""
    text = API.read_text()
    found = []
    for entry_start, entry in _entries(text):
        package, before = _section_package(text, entry_start), []
        for match in SPAN.finditer(entry):
            span = " ".join(match.group(1).split())
            call = CALL.match(span)
            if not call or "(" in call.group(1):
                continue
            line = text.count("\n", 0, entry_start + match.start()) + 1
            if parsed := _parse(call.group(1), call.group(2), line, span):
                found.append((parsed, package, before[::-1]))
            before.append(call.group(1))
    return found


def _entries(text: str) -> list[tuple[int, str]]:
    """Paragraphs and bullets, with their offsets (a signature may wrap over lines, never over entries)."""
    starts = [0] + [m.start() + 1 for m in re.finditer(r"\n(?=\* |\n|#)", text)]
    return [(a, text[a:b]) for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _section_package(text: str, offset: int) -> str | None:
    sections = [m for m in SECTION.finditer(text) if m.start() < offset]
    return sections[-1].group(1) if sections else None


def resolve(name: str, package: str | None, context: list[str]) -> Any:
    """The callable a documented name means, or None where it names nothing importable (prose). A bare name is
    looked up in ``kdcache``, the section's package, then on each object named before it in the entry (a method)
    and in its module; ``kdcache.a.b`` is imported."""
    parts = name.split(".")
    if parts[0] == "kdcache":
        return _dotted(parts)
    bases: list[Any] = [kdcache] + ([importlib.import_module(package)] if package else [])
    for earlier in context:
        owner = resolve(earlier, package, [])
        if owner is not None:
            bases += [owner, inspect.getmodule(owner)]
    for base in bases:
        if base is kdcache and parts[0] not in kdcache.__all__:  # the front door only: a moved name warns
            continue
        found = _attributes(base, parts)
        if callable(found):
            return found
    return None


def _dotted(parts: list[str]) -> Any:
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        if cut == len(parts):  # a module named like its function (kdcache.train.evaluate)
            module = importlib.import_module(".".join(parts[:-1]))
            cut -= 1
        found = _attributes(module, parts[cut:])
        return found if callable(found) else None
    return None


def _attributes(base: Any, path: list[str]) -> Any:
    for attribute in path:
        base = getattr(base, attribute, None)
    return base


def _default(node: ast.expr, obj: Any) -> Any:
    namespace = {**vars(kdcache), "_minutes": lambda m: datetime.timedelta(minutes=m)}
    target = inspect.unwrap(obj.__init__ if inspect.isclass(obj) else obj)
    namespace.update(getattr(target, "__globals__", {}))
    namespace.update(vars(inspect.getmodule(obj) or kdcache))
    return eval(compile(ast.Expression(node), "<api.md>", "eval"), namespace)


def _real_default(obj: Any, param: inspect.Parameter) -> Any:
    """The parameter's default; for a dataclass field with a ``default_factory``, what the factory makes."""
    if dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.name == param.name and field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    return param.default


def mismatches(doc: DocSignature, obj: Any) -> list[str]:
    real = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
    P, problems = inspect.Parameter, []
    shown = [(n, k, d) for n, k, d in doc.params]
    if not doc.open_ended and [n for n, _, _ in shown] != [p.name for p in real]:
        problems.append(f"parameters {[n for n, _, _ in shown]} != {[p.name for p in real]}")
    by_name = {p.name: p for p in real}
    order = [p.name for p in real]
    if [n for n, _, _ in shown if n in by_name] != sorted((n for n, _, _ in shown if n in by_name), key=order.index):
        problems.append("parameters are shown in another order")
    for name, kind, default in shown:
        param = by_name.get(name)
        if param is None:
            problems.append(f"{name!r} is not a parameter")
            continue
        real_kind = P.POSITIONAL_OR_KEYWORD if param.kind is P.POSITIONAL_ONLY else param.kind
        if kind is not real_kind:
            problems.append(f"{name!r} is {param.kind.description}, shown {kind.description}")
        if (default is None) != (param.default is P.empty) and kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            shown_default = "no default" if default is None else "a default"
            problems.append(
                f"{name!r} has {'no default' if param.default is P.empty else 'a default'}, shown {shown_default}"
            )
        elif default is not None and not (isinstance(default, ast.Constant) and default.value is Ellipsis):
            value, real_default = _default(default, obj), _real_default(obj, param)
            if value != real_default:
                problems.append(f"{name!r} defaults to {param.default!r}, shown {ast.unparse(default)}")
    return problems


def test_api_signatures_match_the_code() -> None:
    checked, wrong = 0, []
    for doc, package, context in doc_signatures():
        obj = resolve(doc.name, package, context)
        if obj is None:
            continue
        checked += 1
        if problems := mismatches(doc, obj):
            wrong.append(f"docs/api.md:{doc.line}: `{doc.text}`: " + "; ".join(problems))
    assert checked > 60, f"only {checked} signatures of docs/api.md were checked: has the way they are written changed?"
    assert wrong == [], "docs/api.md shows signatures the code does not have:\n" + "\n".join(wrong)


def test_the_signature_check_can_fail() -> None:
    def example(a, b=2, *, c=None, **options):
        return a, b, c, options

    good = _parse("example", "a, b=2, *, c=None, **options", 1, "")
    assert good is not None and mismatches(good, example) == []
    bad = _parse("example", "a, b=3, c=None", 1, "")
    assert bad is not None
    assert mismatches(bad, example) == [
        "parameters ['a', 'b', 'c'] != ['a', 'b', 'c', 'options']",
        "'b' defaults to 2, shown 3",
        "'c' is keyword-only, shown positional or keyword",
    ]
    assert _parse("build_target", '"logits", {}', 1, "") is None
    assert _parse("precompute", "..., store_tokens=True", 1, "") is None
