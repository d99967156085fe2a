"""Pipeline files as pydantic models: the sections every pipeline has (:class:`RunConfig`) and the ``distill``
method's (:class:`DistillConfig`). Schemes add their own sections (:mod:`kdcache.pipeline.schemes`).

Every model forbids unknown keys. Loss and target entries are validated against the parameters of the kind they
name, so ``{name: kd, temprature: 4}`` is an error that lists ``temperature`` as a valid key. The stage, optimiser and
loss models are stage two's own (:mod:`kdcache.train.stages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kdcache.errors import ConfigError, RegistryError, UnsafeNameError
from kdcache.metrics import Task
from kdcache.names import check_safe_name
from kdcache.registry import RegisteredEntry, moved_names
from kdcache.targets import TARGETS, build_target
from kdcache.train import LossConfig, StageConfig
from kdcache.train.epochs import ViewPolicy
from kdcache.train.stages import Section
from kdcache.views import VIEW_OPS
from kdcache.views.keyed import check_transform_names


class ModelConfig(Section):
    """``{arch: digits-cnn, args: {width: 64}}`` or any import path: ``{arch: "torchvision.models:resnet18", args:
    {weights: null}}`` (called with ``args`` plus ``num_classes`` when it takes one)."""

    arch: str
    args: dict[str, Any] = {}

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        from kdcache.models import MODELS

        try:
            return MODELS.check_known(arch)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None


class DataConfig(Section):
    """The dataset: a registered name (``digits``, ``hdf5``, ...) called with the split, or an import path of a
    callable returning a map-style ``torch.utils.data.Dataset`` of ``(image, label)`` items
    (``torchvision.datasets:ImageFolder``). ``args`` go to every split, ``splits.<split>`` to that split only."""

    dataset: str
    args: dict[str, Any] = {}
    splits: dict[str, dict[str, Any]] = {}
    num_classes: int = Field(gt=1)
    task: Task = "classification"
    ignore_index: int = -100
    train_split: str = "train"
    test_split: str = "test"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    max_train_samples: int | None = Field(default=None, gt=0)
    max_test_samples: int | None = Field(default=None, gt=0)
    classes: list[int] | None = Field(default=None, min_length=2)

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        from kdcache.datasets import DATASETS

        try:
            return DATASETS.check_known(name)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None

    def split_args(self, split: str) -> dict[str, Any]:
        """The arguments of one split: ``args`` updated with ``splits.<split>``."""
        return {**self.args, **self.splits.get(split, {})}

    @model_validator(mode="after")
    def _classes_are_the_task(self) -> DataConfig:
        """``classes: [5, 6, 7, 8, 9]`` trains on those classes only, relabelled 0..k-1 (:class:`ClassSubset`)."""
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(
                f"classes lists {len(self.classes)} classes but num_classes is {self.num_classes}; with classes set, "
                "num_classes is the number of classes kept"
            )
        return self


class TargetConfig(RegisteredEntry):
    """``{kind: logits, dtype: float16}``: a target to cache and its parameters."""

    _registry = TARGETS
    _key = "kind"
    kind: str

    @property
    def target_name(self) -> str:
        """The name the target is stored and referenced under (``logits``, ``fsp/layer1__layer2``, ...)."""
        return build_target(self.kind, self.params).name


class ViewOpConfig(RegisteredEntry):
    """``{op: random_crop, padding: 1}``: an augmentation op of the view transform and its parameters."""

    _registry = VIEW_OPS
    _key = "op"
    op: str


class MixConfig(Section):
    """MixUp or CutMix of augmented views with a keyed partner sample (:class:`kdcache.views.Mix`)."""

    kind: Literal["mixup", "cutmix"]
    alpha: float = Field(default=1.0, gt=0)
    p: float = Field(default=1.0, ge=0, le=1)


class ViewsConfig(Section):
    """The views cached per sample (``count``, ``seed``, ``augment`` or ``pipeline``, ``eval``, ``mix``: the store's
    view spec) and how stage two picks one per epoch (``policy``, not part of the spec: one store serves every policy).

    Views ``>= 1`` are made by kdcache's ops (``augment``) or by a torchvision v2 ``pipeline``: a list of
    ``{name: RandomResizedCrop, size: 32, ...}`` steps, or an import path ``package.module:callable`` returning a
    transform (called with ``pipeline_args``). View 0 and evaluation use ``eval`` (same forms; e.g. Resize +
    CenterCrop for images of varying size). ``cycle`` walks the cached views in turn, ``random`` draws one keyed by
    (seed, epoch, sample); ``fresh`` draws a new view every epoch (view ``1 + epoch``) for online KD and scratch
    training, and cannot be used with a cache.
    """

    count: int = Field(default=1, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**128)
    policy: ViewPolicy = "cycle"
    augment: list[ViewOpConfig] = []
    pipeline: list[dict[str, Any]] | str | None = None
    pipeline_args: dict[str, Any] = {}
    eval: list[dict[str, Any]] | str | None = None
    eval_args: dict[str, Any] = {}
    mix: MixConfig | None = None

    @field_validator("pipeline", "eval")
    @classmethod
    def _known_transforms(
        cls, spec: list[dict[str, Any]] | str | None, info: ValidationInfo
    ) -> list[dict[str, Any]] | str | None:
        if spec == []:  # torchvision's Compose refuses an empty list later, naming neither the key nor the fix
            raise ValueError(
                f"views.{info.field_name} is an empty list: list at least one torchvision step (e.g. [{{name: "
                f"CenterCrop, size: 28}}]) or leave views.{info.field_name} out for no transform"
            )
        try:
            check_transform_names(spec)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return spec

    @model_validator(mode="after")
    def _one_kind_of_augmentation(self) -> ViewsConfig:
        if self.augment and self.pipeline is not None:
            raise ValueError("use either augment (kdcache's ops) or pipeline (torchvision v2), not both")
        return self


class TrainConfig(Section):
    batch_size: int = Field(default=64, gt=0)
    stages: list[StageConfig] = Field(min_length=1)
    num_workers: int = Field(default=0, ge=0)


class EnsembleConfig(Section):
    """Stage two learns from several cached teachers of one store: ``mode: logits`` averages their logits,
    ``mode: probs`` their softmax at the loss's temperature (see kdcache/targets/ensemble.py)."""

    members: list[str] = Field(min_length=2)
    mode: Literal["logits", "probs"] = "logits"

    @field_validator("members")
    @classmethod
    def _distinct(cls, members: list[str]) -> list[str]:
        if len(set(members)) != len(members):
            raise ValueError(f"ensemble members must be distinct teacher names, got {members}")
        return [_teacher_name(m) for m in members]


def _teacher_name(name: str) -> str:
    """A teacher name is one plain level of the store (refused at load, before any store is touched)."""
    try:
        return check_safe_name(name, what="teacher", levels=False)
    except UnsafeNameError as exc:
        raise ValueError(str(exc)) from None


class TeacherConfig(Section):
    name: str = "teacher"
    model: ModelConfig
    checkpoint: Path | None = None
    train: TrainConfig | None = None
    ensemble: EnsembleConfig | None = None
    make: str | None = None  # the command that writes a missing teacher directory, named in its error

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _teacher_name(name)


class CheckpointConfig(Section):
    """Training checkpoints of the student: always at the end of each epoch, and every ``every_steps`` optimiser
    steps when that is set. ``kdcache train --resume`` continues from the last one (docs/distributed-training.md)."""

    every_steps: int = Field(default=0, ge=0)
    stop_after_steps: int | None = Field(default=None, gt=0)
    log_samples: bool = False


class StudentConfig(Section):
    model: ModelConfig
    train: TrainConfig
    checkpoint: CheckpointConfig = CheckpointConfig()


class CacheConfig(Section):
    store: str | None = None
    targets: list[TargetConfig] = [TargetConfig(kind="logits")]
    shard_samples: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)
    ram_budget_mb: float = Field(default=2048, ge=0)
    shard_cache: str | None = None  # stage two: a local directory keeping whole shards of a remote store
    shard_cache_mb: float = Field(default=16384, ge=0)
    allow_teacher_mismatch: bool = False
    allow_tokenizer_mismatch: bool = False  # stage one: a teacher shipping another tokenizer than the data's, logged
    store_tokens: bool = False  # token data: the store holds the sequences; cached students read them, not the corpus

    @property
    def produced(self) -> list[str]:
        """Names of the targets stage one writes (what losses may read), sorted."""
        return sorted({t.target_name for t in self.targets})

    @field_validator("shard_samples")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"shard_samples must be a power of two (so inner chunks divide it), got {value}")
        return value


TargetSource = Literal["none", "cached", "online"]
"""Where a student variant's teacher targets come from: none (scratch), the cached store, or a live teacher."""


class VariantConfig(Section):
    """A student run of ``kdcache run`` / ``kdcache train --variant``: where teacher targets come from (``none``,
    the ``cached`` store, or an ``online`` live teacher), optionally stages of its own, and ``set`` overrides of the
    pipeline for this run only (the ``--set`` syntax), e.g. ``{name: cached-16, source: cached,
    set: [views.count=16]}`` trains from the 16-view store."""

    name: str
    source: TargetSource
    stages: list[StageConfig] | None = Field(default=None, min_length=1)
    set: list[str] = []

    @field_validator("set")
    @classmethod
    def _overrides(cls, items: list[str]) -> list[str]:
        for item in items:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key.sub=value")
        return items


SHORTHAND_VARIANTS: dict[str, TargetSource] = {"scratch": "none", "online": "online", "cached": "cached"}
SEED_LIMIT = 2**32  # the range every generator a run seeds accepts (numpy's legacy one is the narrowest)


class RunConfig(Section):
    """What every pipeline has, whatever its ``method``: name, seed, device, output directory, data, views, cache."""

    name: str
    method: str = "distill"
    seed: int = 0
    device: str = "cpu"
    output_dir: Path | None = None
    data: DataConfig
    views: ViewsConfig = ViewsConfig()
    cache: CacheConfig = CacheConfig()

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_in_range(cls, seed: Any) -> Any:
        """Refused here rather than by ``torch.manual_seed`` or numpy later, with a ValueError traceback."""
        if isinstance(seed, int | float) and not 0 <= seed < SEED_LIMIT:
            raise ValueError(
                f"seed {seed!r} is outside 0..{SEED_LIMIT - 1}, the range every generator a run seeds accepts"
            )
        return seed

    @property
    def out(self) -> Path:
        return self.output_dir or Path("runs") / self.name

    @property
    def store_url(self) -> str:
        """``cache.store``, else ``<output_dir>/cache/<train split><store_suffix>.zarr``."""
        return self.cache.store or str(self.out / "cache" / f"{self.data.train_split}{self.store_suffix}.zarr")

    @property
    def store_suffix(self) -> str:
        """What tells this method's default store apart from others in the same output directory."""
        return ""


class DistillConfig(RunConfig):
    """A ``method: distill`` pipeline (the default): a teacher, stage one, and student variants."""

    method: Literal["distill"] = "distill"
    teacher: TeacherConfig
    student: StudentConfig
    compare: list[VariantConfig] = Field(default=["scratch", "online", "cached"], min_length=1, validate_default=True)
    scratch_losses: list[LossConfig] = [LossConfig(name="ce")]

    @field_validator("compare", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        """``scratch``, ``online`` and ``cached`` stand for the student's own schedule with that target source."""
        if not isinstance(value, list):
            return value
        return [
            {"name": v, "source": SHORTHAND_VARIANTS[v]} if isinstance(v, str) and v in SHORTHAND_VARIANTS else v
            for v in value
        ]

    @model_validator(mode="after")
    def _variants_are_consistent(self) -> DistillConfig:
        names = [v.name for v in self.compare]
        if len(set(names)) != len(names):
            raise ValueError(f"compare has repeated variant names {names}; give each variant its own name")
        produced = self.cache.produced
        for variant in [*self.compare, *(self.variant(n) for n in SHORTHAND_VARIANTS if n not in names)]:
            for index, stage in enumerate(self.variant_stages(variant)):
                for loss in stage.losses:
                    where = f"variant {variant.name!r}, stage {index} ({stage.name}), loss {loss.name!r}"
                    needed = set(loss.teacher_targets())
                    if needed and variant.source == "none":
                        raise ValueError(f"{where} reads teacher targets {sorted(needed)} but the source is none")
                    if missing := sorted(needed - set(produced)):
                        raise ValueError(
                            f"{where} reads teacher target(s) {missing}, but cache.targets produces {produced}. "
                            "Add the target to cache.targets"
                        )
        return self

    def variant(self, name: str) -> VariantConfig:
        """The variant called ``name``: one listed in ``compare``, or a shorthand (scratch, online, cached)."""
        for variant in self.compare:
            if variant.name == name:
                return variant
        if name in SHORTHAND_VARIANTS:
            return VariantConfig(name=name, source=SHORTHAND_VARIANTS[name])
        known = sorted({*(v.name for v in self.compare), *SHORTHAND_VARIANTS})
        raise ConfigError(f"unknown variant {name!r}; this pipeline has {known}")

    def variant_stages(self, variant: VariantConfig) -> list[StageConfig]:
        """A variant's own stages, else the student's schedule (with ``scratch_losses`` only when no teacher)."""
        if variant.stages is not None:
            return list(variant.stages)
        if variant.source != "none":
            return list(self.student.train.stages)
        epochs = sum(s.epochs for s in self.student.train.stages)
        last = self.student.train.stages[-1]
        return [
            StageConfig(name=variant.name, epochs=epochs, optimizer=last.optimizer, losses=list(self.scratch_losses))
        ]

    @model_validator(mode="after")
    def _ensemble_is_cached(self) -> DistillConfig:
        if self.teacher.ensemble is not None and any(v.source == "online" for v in self.compare):
            raise ValueError(
                "teacher.ensemble is read from the store, so the 'online' variant (one live teacher) cannot use it; "
                "set compare: [scratch, cached]"
            )
        return self

    @property
    def teacher_names(self) -> list[str]:
        """The cached teachers stage two reads: the ensemble's members, else ``teacher.name``."""
        return list(self.teacher.ensemble.members) if self.teacher.ensemble else [self.teacher.name]

    @property
    def teacher_checkpoint(self) -> Path:
        return self.teacher.checkpoint or self.out / "teacher.safetensors"

    @property
    def store_suffix(self) -> str:
        """``-<V>views`` for V > 1 views, so stores of different view counts live side by side."""
        return f"-{self.views.count}views" if self.views.count > 1 else ""


__getattr__ = moved_names(
    __name__, {"PipelineConfig": "kdcache.pipeline:DistillConfig", "RunSettings": "kdcache.pipeline:RunConfig"}
)
