"""Reading pipeline files: YAML, ``--set key.sub=value`` overrides, validation against the model of the pipeline's
``method``, and errors that say where the problem is and which keys are valid there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kdcache.errors import ConfigError
from kdcache.pipeline.config import DistillConfig, RunConfig
from kdcache.pipeline.methods import METHODS
from kdcache.pipeline.yamlsafe import load_yaml, read_yaml_file


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a pipeline YAML; ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML)."""
    path = Path(path)
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, teacher, student, ...)")
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_pipeline(raw, source=str(path))


def with_overrides(cfg: DistillConfig, overrides: list[str], *, source: str = "<overrides>") -> DistillConfig:
    """``cfg`` with ``dotted.key=value`` overrides applied and validated again (e.g. one compare variant's ``set``)."""
    raw = cfg.model_dump(mode="json")
    for item in overrides:
        _apply_override(raw, item)
    return distill_pipeline(parse_pipeline(raw, source=source), source)


def distill_pipeline(cfg: RunConfig, what: str) -> DistillConfig:
    """``cfg`` as the method ``distill`` pipeline that ``what`` (a command, a tool) takes; a scheme pipeline (lwf,
    rocket, selfkd: no single teacher and student to read) is refused, naming its method and what runs it."""
    if not isinstance(cfg, DistillConfig):
        raise ConfigError(
            f"{what} takes a method distill pipeline, and {cfg.name!r} is a method {cfg.method!r} one: its stages "
            "depend on each other, so only `kdcache run` runs it; give a pipeline file without `method:` (or "
            "`method: distill`)"
        )
    return cfg


def parse_pipeline(raw: dict[str, Any], *, source: str = "<dict>") -> RunConfig:
    """Validate a pipeline dict against the model of its ``method`` (``distill`` unless it says otherwise)."""
    model = pipeline_model(raw.get("method", "distill"))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid pipeline {source}:\n{_describe(exc, model)}") from None


def pipeline_model(method: Any) -> type[RunConfig]:
    """The pydantic model of a pipeline ``method``: distill, or a distillation scheme (:mod:`kdcache.pipeline.methods`)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS.names())}")
    return METHODS.get(method).config


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    dotted, value = item.split("=", 1)
    node: Any = raw
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = load_yaml(value, f"override {item!r}")
    else:
        node[last] = load_yaml(value, f"override {item!r}")


def _describe(exc: ValidationError, root: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(err["loc"][:-1], root)
            msg = f"unknown key; valid keys here: {valid}"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _valid_keys(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return "?"
        model = _inner_model(field.annotation)
    return ", ".join(model.model_fields) if hasattr(model, "model_fields") else "?"


def _inner_model(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        inner = _inner_model(arg)
        if hasattr(inner, "model_fields"):
            return inner
    return annotation
