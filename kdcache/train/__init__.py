"""Stage two: train students from cached targets (or a live teacher), in one process or under torch.distributed.

The data path joins a dataset with a store's targets by sample index (:class:`CachedDataset`; for language models
:class:`CachedTokenDataset`, which first checks tokenizer, packing and vocabulary), a sampler orders
each epoch (:class:`~kdcache.train.sampler.EpochBatchSampler`), :func:`batch_loader` hands out batches and
:func:`fit` trains through stages of weighted losses, checkpointing and resuming exactly. Stage two never imports
stage one: the online-KD teacher (:class:`LiveTeacher`) shares only the target extraction code.
"""

from kdcache.train.batch import Batch
from kdcache.train.checkpointing import Checkpointing
from kdcache.train.data import CachedDataset, ViewDataset
from kdcache.train.evaluate import EpochLog, TrainResult, evaluate
from kdcache.train.live import LiveTeacher, TargetSource, batch_targets
from kdcache.train.loader import batch_loader, set_loader_epoch
from kdcache.train.loop import fit
from kdcache.train.samplelog import consumed_samples
from kdcache.train.sampler import BlockShuffleSampler
from kdcache.train.stages import LossConfig, OptimizerConfig, StageConfig, teacher_targets
from kdcache.train.statefile import load_state, save_state
from kdcache.train.storedtokens import StoredTokens
from kdcache.train.tokens import CachedTokenDataset, require_fresh_teacher, require_token_alignment
from kdcache.train.world import World, process_group

__all__ = [
    "Batch",
    "BlockShuffleSampler",
    "CachedDataset",
    "CachedTokenDataset",
    "Checkpointing",
    "EpochLog",
    "LiveTeacher",
    "LossConfig",
    "OptimizerConfig",
    "StageConfig",
    "StoredTokens",
    "TargetSource",
    "TrainResult",
    "ViewDataset",
    "World",
    "batch_loader",
    "batch_targets",
    "consumed_samples",
    "evaluate",
    "fit",
    "load_state",
    "process_group",
    "require_fresh_teacher",
    "require_token_alignment",
    "save_state",
    "set_loader_epoch",
    "teacher_targets",
]
