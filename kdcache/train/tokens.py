"""Stage two for language models: token sequences joined with their cached per-token targets, after checking that
the store was made for text tokenized and packed the same way and for a teacher of the student's vocabulary.

Token targets are only meaningful position by position against the same token ids: another tokenizer (vocabulary,
special tokens, chat template), another packing (sequence length, separator, order) or another vocabulary width
shifts or renames every target. :func:`require_token_alignment` refuses each with an error naming both sides; the
generic dataset fingerprint check of :meth:`~kdcache.store.StoreReader.require` would only say "a different dataset".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.tokenizer import TOKENIZED_KINDS, describe_tokenizer
from kdcache.errors import StaleTeacherError, TokenAlignmentError, say
from kdcache.models.hfdir import SOURCE_KIND, changed_files, directory_source
from kdcache.store import StoreReader
from kdcache.targets import Ensemble
from kdcache.train.data import CachedDataset
from kdcache.train.storedtokens import StoredTokens
from kdcache.views import TokenViews

TOKENIZER_FACTS = ("vocab_size", "vocab_sha256", "special_tokens", "tokenizer_sha256")


def require_token_alignment(
    cache: StoreReader,
    dataset: SampleDataset,
    *,
    teacher: str | Ensemble | None = None,
    vocab_size: int | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> None:
    """Refuse ``cache`` unless it was cached from text with ``dataset``'s tokenizer and packing, and (when given)
    from a teacher whose vocabulary is ``vocab_size`` tokens (the student's logits width) and with the student's
    own ``tokenizer`` fingerprint (:func:`kdcache.datasets.tokenizer.tokenizer_fingerprint`).

    >>> require_token_alignment(open_store(url), train, vocab_size=1024)  # doctest: +SKIP
    """
    stored, found = cache.manifest.dataset.get("source", {}), dataset.describe()
    for side, source in (("the store", stored), ("the dataset", found)):
        if source.get("kind") not in TOKENIZED_KINDS or "tokenizer" not in source:
            raise TokenAlignmentError(
                f"store {cache.url!r}: {side} is not tokenized text (its source is {source.get('kind')!r}); token "
                "targets need a text or chat dataset on both sides (kdcache.datasets.TextDataset, ChatDataset)"
            )
    _same_tokenizer(cache.url, stored["tokenizer"], found["tokenizer"], "the dataset")
    if tokenizer is not None:
        _same_tokenizer(cache.url, stored["tokenizer"], tokenizer, "the student")
    if stored["packing"] != found["packing"]:
        keys = sorted(
            k for k in {*stored["packing"], *found["packing"]} if stored["packing"].get(k) != found["packing"].get(k)
        )
        sides = "; ".join(f"{k}: store {stored['packing'].get(k)!r}, dataset {found['packing'].get(k)!r}" for k in keys)
        raise TokenAlignmentError(
            f"store {cache.url!r} was cached from text packed another way ({sides}). Targets are per position: pack "
            f"the text as the store did ({say('the dataset seq_len=', 'data.args.seq_len')} and the file list) or "
            f"rebuild the store ({say('precompute(...)', '`kdcache precompute`')})"
        )
    if vocab_size is not None:
        _same_vocabulary(cache, teacher, vocab_size)


class CachedTokenDataset(CachedDataset):
    """:class:`~kdcache.train.CachedDataset` for language models: batches of token sequences (inputs and next-token
    labels ``(B, L)`` int64) with their cached per-token targets, decoded by :meth:`Batch.to`.

    Refuses a store made for other text or another vocabulary (:func:`require_token_alignment`) before the generic
    checks (complete, same dataset, targets present). ``vocab_size`` is the student's logits width; ``tokenizer`` the
    fingerprint of a student's own tokenizer, when it has one; ``teacher_dir`` the ``transformers`` directory the
    teacher was cached from, refused when its files changed since (:func:`require_fresh_teacher`).

    >>> data = CachedTokenDataset(train, open_store(url), teacher="lm", targets=["token_logits_topk"], vocab_size=1024)
    ... # doctest: +SKIP
    >>> batch = next(iter(batch_loader(data, batch_size=8, seed=0))).to("cpu")  # doctest: +SKIP
    >>> batch.inputs.shape, batch.targets["token_logits_topk"].values.shape  # doctest: +SKIP
    (torch.Size([8, 128]), torch.Size([8, 128, 32]))
    """

    def __init__(
        self,
        dataset: SampleDataset,
        cache: StoreReader,
        *,
        teacher: str | Ensemble | None,
        targets: list[str],
        vocab_size: int | None = None,
        tokenizer: dict[str, Any] | None = None,
        teacher_dir: str | Path | None = None,
        ram_budget_bytes: float = 2 * 1024**3,
    ) -> None:
        require_token_alignment(cache, dataset, teacher=teacher, vocab_size=vocab_size, tokenizer=tokenizer)
        if teacher_dir is not None:
            require_fresh_teacher(cache, teacher if isinstance(teacher, str) else None, teacher_dir)
        super().__init__(
            dataset, cache, teacher=teacher, targets=targets, views=TokenViews(), ram_budget_bytes=ram_budget_bytes
        )

    @classmethod
    def from_store(cls, cache: StoreReader, **options: Any) -> CachedTokenDataset:
        """The same dataset with its sequences read from the store itself (:class:`StoredTokens`: a store built
        with ``store_tokens``), so training needs neither the corpus nor the tokenizer; ``options`` are the
        constructor's (``teacher``, ``targets``, ``vocab_size``, ...).

        >>> data = CachedTokenDataset.from_store(open_store(url), teacher="lm", targets=["token_logits_topk"])
        ... # doctest: +SKIP
        """
        budget = options.get("ram_budget_bytes", 2 * 1024**3)
        return cls(StoredTokens(cache, ram_budget_bytes=budget), cache, **options)


def require_store_tokenizer(cache: StoreReader, tokenizer: dict[str, Any], who: str) -> None:
    """Refuse ``cache`` unless its data was tokenized with ``tokenizer`` (a fingerprint): what a run that reads the
    store's own sequences (:class:`StoredTokens`) still checks, because it tokenizes other text (its evaluation
    split) with ``who``'s tokenizer."""
    _same_tokenizer(cache.url, cache.manifest.dataset.get("source", {}).get("tokenizer", {}), tokenizer, who)


def _same_tokenizer(url: str, stored: dict[str, Any], found: dict[str, Any], who: str) -> None:
    if stored.get("digest") == found.get("digest"):
        return
    differ = [k for k in TOKENIZER_FACTS if stored.get(k) != found.get(k)] or ["digest"]
    raise TokenAlignmentError(
        f"store {url!r} was cached with another tokenizer than {who}'s (they differ in {', '.join(differ)}): the "
        f"store's has {describe_tokenizer(stored)}; {who}'s has {describe_tokenizer(found)}. Tokenize with the "
        "store's tokenizer, or rebuild the store with this one (kdcache precompute)"
    )


def _same_vocabulary(cache: StoreReader, teacher: str | Ensemble | None, vocab_size: int) -> None:
    names = teacher.members if isinstance(teacher, Ensemble) else (teacher,)
    for name in names:
        record = cache.teacher(name)
        widths = {
            int(t.params["vocab_size"])
            for t in record.targets.values()
            if t.kind == "token_logits" and t.params.get("vocab_size") is not None
        }
        if widths and widths != {vocab_size}:
            raise TokenAlignmentError(
                f"store {cache.url!r}: teacher {name or cache.teachers[0]!r} has a vocabulary of "
                f"{', '.join(map(str, sorted(widths)))} tokens, but the student's is {vocab_size} (its logits width, "
                f"{say('setup.num_classes', 'data.num_classes')}). Teacher and student must share the vocabulary; "
                "build the student with "
                f"{', '.join(map(str, sorted(widths)))} tokens"
            )


def require_fresh_teacher(cache: StoreReader, teacher: str | None, directory: str | Path) -> None:
    """Refuse ``cache`` unless teacher ``teacher`` was cached from the ``transformers`` model ``directory`` with
    every file as it is now (config, weights shards, tokenizer: :func:`~kdcache.models.hfdir.directory_source`). A
    directory retrained or edited in place would otherwise leave its old targets in use, silently."""
    record = cache.teacher(teacher)
    recorded = record.fingerprint.get("source") or {}
    name = teacher or cache.teachers[0]
    if recorded.get("kind") != SOURCE_KIND or "files" not in recorded:
        raise StaleTeacherError(
            f"store {cache.url!r}: teacher {name!r} was not cached from a model directory, so it cannot be proven to "
            f"be the one in {str(directory)!r}. Cache it from there ({say('precompute(...)', '`kdcache precompute`')}) under this name"
        )
    if changes := changed_files(recorded, directory_source(directory)):
        raise StaleTeacherError(
            f"store {cache.url!r}: teacher {name!r} was cached from {recorded['path']!r}, whose files changed since: "
            f"{'; '.join(changes)}. Its targets are stale: cache the directory as it is now (delete the store, or "
            f"{say('precompute(...)', '`kdcache precompute`')} under another {say('teacher_name=', 'teacher.name')}), or restore the files it was cached from"
        )
