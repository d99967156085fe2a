"""Pipeline files: pydantic models for the YAML, and :func:`load_pipeline` with readable errors.

Every model forbids unknown keys. Loss and target entries are validated against the parameters of the kind they
name, so ``{name: kd, temprature: 4}`` is an error that lists ``temperature`` as a valid key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdcache.errors import ConfigError, RegistryError
from kdcache.losses import LOSSES
from kdcache.targets import TARGETS
from kdcache.views import VIEW_OPS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    arch: str
    args: dict[str, Any] = {}

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        from kdcache.models import MODELS

        if arch not in MODELS:
            raise ValueError(MODELS.unknown_message(arch))
        return arch


class DataConfig(Section):
    dataset: str
    args: dict[str, Any] = {}
    num_classes: int = Field(gt=1)
    task: Literal["classification", "segmentation"] = "classification"
    ignore_index: int = -100
    train_split: str = "train"
    test_split: str = "test"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    max_train_samples: int | None = Field(default=None, gt=0)
    max_test_samples: int | None = Field(default=None, gt=0)

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        from kdcache.datasets import DATASETS

        if name not in DATASETS:
            raise ValueError(DATASETS.unknown_message(name))
        return name


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"


class _Entry(BaseModel):
    """A registry-named entry whose other keys are validated by that entry's ``Params`` model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _registry: ClassVar[Any]
    _key: ClassVar[str] = "name"

    @model_validator(mode="after")
    def _check_params(self) -> _Entry:
        name = getattr(self, self._key)
        try:
            params_model = self._registry.get(name).Params
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        try:
            params_model.model_validate(self.params)
        except ValidationError as exc:
            valid = ", ".join(params_model.model_fields)
            raise ValueError(f"{name}: {_short(exc)} (valid keys: {valid or 'none'})") from None
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LossConfig(_Entry):
    """``{name: kd, weight: 0.9, temperature: 4}``: a loss term, its weight and its own parameters."""

    _registry = LOSSES
    name: str
    weight: float = 1.0


class TargetConfig(_Entry):
    """``{kind: logits, dtype: float16}``: a target to cache and its parameters."""

    _registry = TARGETS
    _key = "kind"
    kind: str


class ViewOpConfig(_Entry):
    """``{op: random_crop, padding: 1}``: an augmentation op of the view transform and its parameters."""

    _registry = VIEW_OPS
    _key = "op"
    op: str


class ViewsConfig(Section):
    """The views cached per sample (``count``, ``seed``, ``augment``: the store's view spec) and how stage two picks
    one per epoch (``policy``, not part of the spec: one store serves every policy).

    ``cycle`` walks the cached views in turn, ``random`` draws one keyed by (seed, epoch, sample); ``fresh`` draws a
    new view every epoch (view ``1 + epoch``) for online KD and scratch training, and cannot be used with a cache.
    """

    count: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**128)
    policy: Literal["cycle", "random", "fresh"] = "cycle"
    augment: list[ViewOpConfig] = []


class StageConfig(Section):
    name: str = "main"
    epochs: int = Field(ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    losses: list[LossConfig] = Field(min_length=1)
    freeze: list[str] = []


class TrainConfig(Section):
    batch_size: int = Field(default=64, gt=0)
    stages: list[StageConfig] = Field(min_length=1)
    num_workers: int = Field(default=0, ge=0)


class TeacherConfig(Section):
    name: str = "teacher"
    model: ModelConfig
    checkpoint: Path | None = None
    train: TrainConfig | None = None


class StudentConfig(Section):
    model: ModelConfig
    train: TrainConfig


class CacheConfig(Section):
    store: str | None = None
    targets: list[TargetConfig] = [TargetConfig(kind="logits")]
    shard_samples: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)
    ram_budget_mb: float = Field(default=2048, ge=0)

    @field_validator("shard_samples")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"shard_samples must be a power of two (so inner chunks divide it), got {value}")
        return value


Variant = Literal["scratch", "online", "cached"]


class CompareRun(Section):
    """One student of ``kdcache run``: a ``variant`` under a ``name``, trained from this pipeline with ``set``
    overrides (the ``--set`` syntax), e.g. ``{name: cached-v1, variant: cached, set: [views.count=1]}``."""

    variant: Variant
    name: str | None = None
    set: list[str] = []

    @field_validator("set")
    @classmethod
    def _overrides(cls, items: list[str]) -> list[str]:
        for item in items:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key.sub=value")
        return items

    @property
    def label(self) -> str:
        return self.name or self.variant


class PipelineConfig(Section):
    name: str
    seed: int = 0
    device: str = "cpu"
    output_dir: Path | None = None
    data: DataConfig
    views: ViewsConfig = ViewsConfig()
    teacher: TeacherConfig
    student: StudentConfig
    cache: CacheConfig = CacheConfig()
    compare: list[Variant | CompareRun] = ["scratch", "online", "cached"]
    scratch_losses: list[LossConfig] = [LossConfig(name="ce")]

    @field_validator("compare")
    @classmethod
    def _unique_names(cls, runs: list[Variant | CompareRun]) -> list[Variant | CompareRun]:
        labels = [r if isinstance(r, str) else r.label for r in runs]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"compare names must be unique; {repeated} repeat (give each entry its own name)")
        return runs

    @property
    def compare_runs(self) -> list[CompareRun]:
        """``compare`` with plain variant names turned into entries without overrides."""
        return [CompareRun(variant=r) if isinstance(r, str) else r for r in self.compare]

    @property
    def out(self) -> Path:
        return self.output_dir or Path("runs") / self.name

    @property
    def teacher_checkpoint(self) -> Path:
        return self.teacher.checkpoint or self.out / "teacher.safetensors"

    @property
    def store_url(self) -> str:
        """``cache.store``, else ``<output_dir>/cache/<train split>.zarr`` (``<split>-<V>views.zarr`` for V > 1 views,
        so stores of different view counts live side by side)."""
        views = f"-{self.views.count}views" if self.views.count > 1 else ""
        return self.cache.store or str(self.out / "cache" / f"{self.data.train_split}{views}.zarr")


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML; ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, teacher, student, ...)")
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_pipeline(raw, source=str(path))


def with_overrides(cfg: PipelineConfig, overrides: list[str], *, source: str = "<overrides>") -> PipelineConfig:
    """``cfg`` with ``dotted.key=value`` overrides applied and validated again; the result compares nothing
    (``compare: []``): it describes one run."""
    raw = cfg.model_dump(mode="json")
    for item in overrides:
        _apply_override(raw, item)
    raw["compare"] = []
    return parse_pipeline(raw, source=source)


def parse_pipeline(raw: dict[str, Any], *, source: str = "<dict>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid pipeline {source}:\n{_describe(exc)}") from None


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
        node[int(last)] = yaml.safe_load(value)
    else:
        node[last] = yaml.safe_load(value)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(err["loc"][:-1])
            msg = f"unknown key; valid keys here: {valid}"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _valid_keys(loc: tuple[Any, ...]) -> str:
    model: Any = PipelineConfig
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


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
