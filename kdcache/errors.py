"""One exception hierarchy for kdcache.

Every message says what was expected, what was found, and how to fix it. Each class also derives from the builtin it
refines, so ``except ValueError`` in user code keeps working.

The fix is written in the caller's words (:func:`say`): a Python caller of the engines reads the parameter to pass
(``precompute(..., break_lock=True)``), a pipeline user (``kdcache`` commands, :mod:`kdcache.pipeline`) the YAML
key or the flag (``--break-lock``, ``cache.targets``). The pipeline layer and the CLI run the engines inside
``speaking("pipeline")``; everything else speaks Python.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Literal

Speaker = Literal["python", "pipeline"]
"""Whom a message addresses: a Python caller (parameters) or a pipeline user (YAML keys, command-line flags)."""

_SPEAKER: contextvars.ContextVar[Speaker] = contextvars.ContextVar("kdcache_speaker", default="python")


@contextlib.contextmanager
def speaking(speaker: Speaker) -> Iterator[None]:
    """Messages made in this block (this thread, and threads or dask tasks handed :func:`current_speaker`) name
    settings as ``speaker`` writes them; also a decorator (``@speaking("pipeline")``)."""
    token = _SPEAKER.set(speaker)
    try:
        yield
    finally:
        _SPEAKER.reset(token)


def current_speaker() -> Speaker:
    """Whom messages made here address (``"python"`` unless inside :func:`speaking`)."""
    return _SPEAKER.get()


def say(python: str, pipeline: str) -> str:
    """A setting or a fix in the current caller's words: ``python`` (a parameter, a call) or ``pipeline`` (a YAML
    key, a flag, a ``kdcache`` command)."""
    return pipeline if _SPEAKER.get() == "pipeline" else python


class KdcacheError(Exception):
    """Base class of every error kdcache raises on purpose.

    An error raised in a DataLoader worker reaches the main process re-created by torch as ``type(msg)``, with the
    worker's whole traceback in ``msg``; such an error keeps its own message (the traceback is moved to
    ``worker_traceback``), so the user sees the one line kdcache wrote, whichever process raised it.
    """

    worker_traceback: str = ""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(f"Caught {type(self).__name__} in "):
            marker = f"\n{type(self).__module__}.{type(self).__qualname__}: "
            head, found, message = args[0].rpartition(marker)
            if found:
                self.worker_traceback = head
                args = (message.removesuffix("\n"),)
        super().__init__(*args)


class ConfigError(KdcacheError, ValueError):
    """A pipeline file or an argument is invalid (unknown key, wrong type, unknown name)."""


class RegistryError(KdcacheError, KeyError):
    """A name was looked up in a registry that does not know it, or registered twice."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class StoreNotFoundError(KdcacheError, FileNotFoundError):
    """No kdcache store exists at the given location."""


class StoreFormatError(KdcacheError, ValueError):
    """The store is not a kdcache Zarr v3 store this version can read (format version, metadata, codecs)."""


class StoreIncompleteError(KdcacheError, RuntimeError):
    """The store, or the teacher asked for, has not been completely written."""


class StoreMismatchError(KdcacheError, ValueError):
    """The store does not describe what it is being used with (dataset, teacher, classes, views, shapes)."""


class TokenAlignmentError(StoreMismatchError):
    """A store's token targets were made for other text: another tokenizer, packing or vocabulary."""


class TargetMismatchError(KdcacheError, ValueError):
    """A teacher target does not fit the student it is compared with (shape, channels, classes), cached or live."""


class UndecodedBatchError(KdcacheError, RuntimeError):
    """A batch's teacher targets were read before ``batch.to(device)`` decoded them from the store's encoding."""


class SampleMismatchError(StoreMismatchError):
    """A sample's content (input or label) differs from what stage one cached for it: the dataset and the store's
    targets would be paired wrongly."""


class DestinationExistsError(KdcacheError, FileExistsError):
    """kdcache would write a file or store where one already exists; nothing was overwritten."""


class StoreLockedError(KdcacheError, RuntimeError):
    """Another writer holds the store's lock."""


class StoreIOError(KdcacheError, OSError):
    """Reading or writing a store failed for a reason outside kdcache (disk full, permissions, network)."""


class CorruptShardError(KdcacheError, OSError):
    """A committed shard is missing or its bytes differ from what the manifest recorded."""


class UnsafeNameError(KdcacheError, ValueError):
    """A store, teacher or target name could escape the store root or is otherwise not allowed."""


class NonFiniteTargetError(KdcacheError, ValueError):
    """A teacher produced NaN or Inf; nothing of the batch is written."""


class TargetOverflowError(KdcacheError, ValueError):
    """A teacher output does not fit the storage dtype (e.g. |x| > 65504 for float16)."""


class LayerNotFoundError(KdcacheError, KeyError):
    """A module path does not name a layer of the model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(KdcacheError, ValueError):
    """A checkpoint is missing, unsafe to load, or does not fit the model."""


class PerformanceWarning(UserWarning):
    """Works, but much slower than it needs to be; the message says what to change."""


class ViewMismatchError(StoreMismatchError):
    """A view's model input differs from the input stage one gave the teacher for it: the view's cached targets
    would be trained on with another input."""


class StaleTeacherError(StoreMismatchError):
    """The teacher's files changed since its targets were cached (a model directory retrained or edited in place):
    the store's targets belong to the teacher as it was."""


class ForeignItemsError(KdcacheError, ValueError):
    """Per-sample items made by another dataset (another store, other targets) handed to this one's ``as_batch``:
    its decoders would read their stored arrays as other numbers."""
