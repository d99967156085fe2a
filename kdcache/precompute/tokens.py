"""Stage one's proof that a language-model teacher reads the data's token ids as the data means them.

Per-token targets are only right if the teacher and the text agree on what every id is. A teacher narrower than the
tokenizer would fail on the first high id with a raw ``IndexError`` (its embedding has no such row); a teacher whose
directory ships another tokenizer would run without a sound and cache targets for other tokens. Both are refused
here, before anything runs, with a :class:`~kdcache.errors.TokenAlignmentError` naming both sides.
``allow_tokenizer_mismatch`` (``cache.allow_tokenizer_mismatch`` in a pipeline) caches anyway, with a warning, for a
teacher whose tokenizer files differ in a way known not to matter to this data.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.tokenizer import TOKENIZED_KINDS, describe_tokenizer
from kdcache.errors import TokenAlignmentError, say
from kdcache.models.hfdir import input_vocabulary, model_source

log = logging.getLogger(__name__)


def check_teacher_tokens(
    teacher: nn.Module, dataset: SampleDataset, name: str, *, allow_tokenizer_mismatch: bool = False
) -> None:
    """Refuse a teacher for tokenized text unless it takes every id of the data's tokenizer and, when its directory
    ships a tokenizer, that tokenizer gives the same ids (:func:`~kdcache.datasets.tokenizer.tokenizer_fingerprint`).
    Data that is not tokenized text is not checked."""
    source = dataset.describe()
    data = source.get("tokenizer") if source.get("kind") in TOKENIZED_KINDS else None
    if data is None:
        return
    width = input_vocabulary(teacher)
    if width is not None and width < data["vocab_size"]:
        raise TokenAlignmentError(
            f"teacher {name!r} takes {width} token ids (its input embedding), but the data's tokenizer produces "
            f"{data['vocab_size']} ({describe_tokenizer(data)}): ids {width} and up have no embedding. Use the "
            f"teacher's own tokenizer for the data ({_tokenizer_setting()}), or a teacher of this vocabulary"
        )
    directory = model_source(teacher) or {}
    own = directory.get("tokenizer")
    if own is None or own["digest"] == data["digest"]:
        return
    _refuse_tokenizer(name, directory["path"], own, data, allow_tokenizer_mismatch)


def _refuse_tokenizer(name: str, path: str, own: dict[str, Any], data: dict[str, Any], allow: bool) -> None:
    differ = [k for k in ("vocab_size", "vocab_sha256", "special_tokens", "tokenizer_sha256") if own[k] != data[k]]
    message = (
        f"teacher {name!r} ships another tokenizer than the data's (they differ in {', '.join(differ)}): the "
        f"teacher's, in {path!r}, has {describe_tokenizer(own)}; the data's has {describe_tokenizer(data)}"
    )
    if allow:
        setting = say("allow_tokenizer_mismatch", "cache.allow_tokenizer_mismatch")
        log.warning("%s; caching anyway because %s is set", message, setting)
        return
    raise TokenAlignmentError(
        f"{message}. Its targets would belong to other tokens: tokenize the data with the teacher's tokenizer "
        f"({_tokenizer_setting(path)}), or, if the two are known to give the same ids on this text, set "
        + say("precompute(..., allow_tokenizer_mismatch=True)", "cache.allow_tokenizer_mismatch: true")
        + " (logged)"
    )


def _tokenizer_setting(path: str | None = None) -> str:
    """Where the caller names the data's tokenizer (set to ``path``, when given), in the caller's words."""
    if path is None:
        return say("the dataset's tokenizer=", "data.args.tokenizer")
    return say(f"the dataset's tokenizer={path!r}", f"data.args.tokenizer: {path}")
