"""Chat datasets: conversations rendered with the tokenizer's chat template exactly as ``transformers`` renders them,
labels on assistant tokens only, one conversation per sample, and a cached top-k KD loss that sees only the
assistant's positions."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from kdcache.datasets import DATASETS, ChatDataset
from kdcache.datasets.text import tokens_per_sample
from kdcache.errors import ConfigError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedTokenDataset, batch_loader
from kdcache.views import TokenViews
from tests.chatkit import CONVERSATIONS, PLAIN_TEMPLATE, chat_tokenizer, write_chat
from tests.lmkit import trained_lm

SEQ = 64


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {
        "data": write_chat(root),
        "generation": chat_tokenizer(root / "gen"),
        "plain": chat_tokenizer(root / "plain", PLAIN_TEMPLATE),
    }


def chat(chat_dir, template: str = "generation", **options) -> ChatDataset:
    return ChatDataset(
        [str(chat_dir["data"])], tokenizer=chat_dir[template], seq_len=options.pop("seq_len", SEQ), **options
    )


def hf_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("template", ["generation", "plain"])
def test_rendered_ids_equal_transformers_apply_chat_template(chat_dir, template) -> None:
    data, hf = chat(chat_dir, template), hf_tokenizer(chat_dir[template])
    inputs, _ = data.get_batch(np.arange(len(data)))
    for i, conversation in enumerate(CONVERSATIONS):
        expected = hf.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        assert inputs[i, : data.lengths[i]].tolist() == list(expected)
    assert data.describe()["packing"]["chat_template_sha256"] == data.tokenizer.chat_template_sha256
    assert data.tokenizer.chat_template == (chat_dir[template] / "chat_template.jinja").read_text()


@pytest.mark.parametrize("template", ["generation", "plain"])
def test_labels_are_the_assistant_tokens_of_a_two_turn_conversation(chat_dir, template) -> None:
    data, hf = chat(chat_dir, template), hf_tokenizer(chat_dir[template])
    inputs, labels = data.get_batch(np.array([0]))
    ids, labels = inputs[0, : data.lengths[0]].tolist(), labels[0].tolist()
    assistant, end = hf.convert_tokens_to_ids(["<|assistant|>", "<|end|>"])
    first = ids.index(assistant) + 2  # "<|assistant|>", "\n", then the answer
    last = len(ids) - 2 if template == "generation" else len(ids) - 1  # "<|end|>" ("\n" too without generation tags)
    assert ids[last - (template == "plain")] == end
    assert hf.decode(ids[first : last + 1]).startswith("every token of the teacher<|end|>")
    expected = [-100] * SEQ
    expected[first - 1 : last] = ids[first : last + 1]  # position t is labelled with the assistant token t + 1
    assert labels == expected


def test_train_on_all_labels_every_next_token_of_the_conversation(chat_dir) -> None:
    data = chat(chat_dir, train_on="all")
    inputs, labels = data.get_batch(np.arange(len(data)))
    for i, n in enumerate(data.lengths):
        assert labels[i, : n - 1].tolist() == inputs[i, 1:n].tolist()
        assert (labels[i, n - 1 :] == -100).all()
    assert data.describe()["packing"]["train_on"] == "all"


def test_no_sample_mixes_two_conversations(chat_dir) -> None:
    data, hf = chat(chat_dir), hf_tokenizer(chat_dir["generation"])
    inputs, labels = data.get_batch(np.arange(len(data)))
    mask = data.attention_mask(np.arange(len(data)))
    assert len(data) == len(CONVERSATIONS) and inputs.shape == labels.shape == (len(CONVERSATIONS), SEQ)
    starts = set(hf.convert_tokens_to_ids(["<|system|>", "<|user|>"]))
    for i, conversation in enumerate(CONVERSATIONS):
        n = int(data.lengths[i])
        assert mask[i].tolist() == [1] * n + [0] * (SEQ - n)
        assert (inputs[i, n:] == data.pad_id).all() and (labels[i, n - 1 :] == -100).all()
        assert int(inputs[i, 0]) in starts  # every sample opens with its conversation's first turn
        roles = [
            t
            for t in hf.convert_ids_to_tokens(inputs[i, :n].tolist())
            if t in {"<|system|>", "<|user|>", "<|assistant|>"}
        ]
        assert roles == [f"<|{m['role']}|>" for m in conversation]  # its own turns, no other conversation's


def test_the_registered_dataset_builds_splits_and_reports_tokens_per_sample(chat_dir) -> None:
    args = {"tokenizer": str(chat_dir["generation"]), "seq_len": SEQ, "splits": {"train": [str(chat_dir["data"])]}}
    data = DATASETS.resolve("chat")("train", **args)
    assert isinstance(data, ChatDataset) and data.describe()["kind"] == "chat" and data.describe()["split"] == "train"
    assert tokens_per_sample(data.describe()) == SEQ
    with pytest.raises(ConfigError, match="no split 'test'"):
        DATASETS.resolve("chat")("test", **args)


def test_a_pin_of_a_file_no_split_lists_is_refused_naming_both(chat_dir) -> None:
    listed, digest = str(chat_dir["data"]), hashlib.sha256(chat_dir["data"].read_bytes()).hexdigest()
    args = {"tokenizer": str(chat_dir["generation"]), "seq_len": SEQ, "splits": {"train": [listed]}}
    pinned = DATASETS.resolve("chat")("train", **args, sha256={listed: digest})  # a listed file's right pin: used
    assert pinned.describe()["files"] == [[listed, digest]]
    with pytest.raises(ConfigError, match=r"pins \['data/chats.jsonl'\], which no split lists \(the splits list \["):
        DATASETS.resolve("chat")("train", **args, sha256={"data/chats.jsonl": digest})
    with pytest.raises(ConfigError, match=r"has SHA-256 .* but the pipeline pins"):  # a listed file's wrong pin
        DATASETS.resolve("chat")("train", **args, sha256={listed: "0" * 64})


def test_all_labels_are_the_held_labels_read_only_not_a_copy(chat_dir) -> None:
    data = chat(chat_dir)
    labels = data.all_labels()
    assert (
        labels.shape == (len(CONVERSATIONS), SEQ) and (labels == data.get_batch(np.arange(len(data)))[1].numpy()).all()
    )
    assert np.shares_memory(labels, data.labels.numpy()) and not labels.flags.writeable
    assert (labels != -100).sum() == (data.labels != -100).sum() > 0


def test_a_long_conversation_is_refused_or_truncated(chat_dir) -> None:
    with pytest.raises(ConfigError, match=r"chat.jsonl:1: .* 29 tokens, more than seq_len=16.*truncate: true"):
        chat(chat_dir, seq_len=16)
    full, cut = chat(chat_dir, train_on="all"), chat(chat_dir, seq_len=16, truncate=True, train_on="all")
    full_inputs, full_labels = full.get_batch(np.arange(len(full)))
    inputs, labels = cut.get_batch(np.arange(len(cut)))
    assert (inputs == full_inputs[:, :16]).all() and (labels == full_labels[:, :16]).all()  # the last keeps its label


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "hello"}, r"chat.jsonl:1: expected a JSON object with a non-empty list 'messages'"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, r"message 0 has role 'robot'; known roles are"),
        ({"messages": [{"role": "user", "content": 3}]}, r"message 0 is not an object with a string 'content'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"no assistant message.*train_on: all"),
    ],
)
def test_bad_records_are_refused_naming_the_line(chat_dir, tmp_path, record, message) -> None:
    bad = tmp_path / "chat.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(ConfigError, match=message):
        ChatDataset([str(bad)], tokenizer=chat_dir["generation"], seq_len=SEQ)


def test_a_tokenizer_without_a_chat_template_is_refused(chat_dir) -> None:
    with pytest.raises(ConfigError, match="has no chat template"):
        ChatDataset([str(chat_dir["data"])], tokenizer=chat_dir["generation"].parent / "raw", seq_len=SEQ)


def hand_topk_kl(student: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, lse: float) -> float:
    """KL(p ‖ q) over the k kept tokens and one tail bin at one position, in float64 from the definitions."""
    q = torch.softmax(student.double(), dim=0)
    p_top = [math.exp(float(v) - lse) for v in values]
    q_top = [float(q[int(i)]) for i in indices]
    p_tail, q_tail = 1 - sum(p_top), 1 - sum(q_top)
    head = sum(p * math.log(p / r) for p, r in zip(p_top, q_top, strict=True))
    return head + (p_tail * math.log(p_tail / q_tail) if p_tail > 0 else 0.0)


def test_a_cached_topk_loss_sees_only_the_assistant_positions(chat_dir, tmp_path) -> None:
    data = chat(chat_dir)
    teacher = trained_lm(data, data.vocab_size, steps=10)
    precompute(
        teacher,
        data,
        str(tmp_path / "chat.zarr"),
        targets=[build_target("token_logits", {"k": 8})],
        views=TokenViews(),
        num_classes=data.vocab_size,
        teacher_name="lm",
        batch_size=2,
        progress=False,
    )
    cached = CachedTokenDataset(
        data,
        open_store(str(tmp_path / "chat.zarr")),
        teacher="lm",
        targets=["token_logits_topk"],
        vocab_size=data.vocab_size,
    )
    batch = next(iter(batch_loader(cached, batch_size=len(data), seed=0))).to("cpu")
    student = trained_lm(data, data.vocab_size, seed=5, steps=3)
    with torch.no_grad():
        logits = student(batch.inputs)
    setup = LossSetup(num_classes=data.vocab_size, task="language-model")
    loss = build_objective([("token_kd", 1.0, {"target": "token_logits_topk"})], setup).terms["token_kd"]
    value = loss(StepOutputs(logits, batch.labels, teacher=batch.targets)).item()
    top = batch.targets["token_logits_topk"]
    renderer, rows = data.renderer, []
    for b, i in enumerate(batch.indices.tolist()):
        _, marked = renderer.render(CONVERSATIONS[i])  # from the rendering, not from the labels
        for t in np.flatnonzero(marked[1:]):  # position t predicts assistant token t + 1
            rows.append(hand_topk_kl(logits[b, t], top.values[b, t], top.indices[b, t], float(top.lse[b, t, 0])))
    assert len(rows) == int((batch.labels != -100).sum()) < int(data.lengths.sum()) // 2
    assert value == pytest.approx(sum(rows) / len(rows), rel=1e-5)


def test_perplexity_next_token_and_sampled_kd_see_only_the_assistant_positions(chat_dir) -> None:
    from kdcache.metrics import Perplexity
    from kdcache.targets.tokens import SampledTokens

    data = chat(chat_dir)
    inputs, labels = data.get_batch(np.arange(len(data)))
    torch.manual_seed(0)
    logits = torch.randn(*inputs.shape, data.vocab_size) * 3
    labelled = labels != -100
    nll = -torch.log_softmax(logits.double(), dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    metric = Perplexity()
    metric.update(logits, labels)
    assert metric.summarise(metric.state())["perplexity"] == pytest.approx(math.exp(float(nll[labelled].mean())))
    setup = LossSetup(num_classes=data.vocab_size, task="language-model")
    next_token = build_objective([("next_token", 1.0, {})], setup).terms["next_token"]
    assert next_token(StepOutputs(logits, labels)).item() == pytest.approx(float(nll[labelled].mean()), rel=1e-5)
    ids = torch.stack([labels.clamp_min(0), torch.zeros_like(labels)], dim=-1)  # both draws the label: CE again
    counts = torch.tensor([2, 0], dtype=torch.uint8).expand(ids.shape)
    sampled = SampledTokens(ids, counts, samples=2, temperature=1.0, vocab_size=data.vocab_size)
    kd = build_objective([("token_kd", 1.0, {"target": "token_logits_sampled"})], setup).terms["token_kd"]
    value = kd(StepOutputs(logits, labels, teacher={"token_logits_sampled": sampled})).item()
    assert value == pytest.approx(float(nll[labelled].mean()), rel=1e-5)


def test_a_teacher_directory_caches_chat_data_as_the_same_teacher_in_memory(chat_dir, tmp_path) -> None:
    """A ``save_pretrained`` teacher whose directory ships the data's tokenizer (without the chat template: the
    template changes no token id, so it is not part of the tokenizer fingerprint) caches the same targets."""
    from kdcache.models import CausalLM
    from tests.lmkit import save_teacher_dir

    data = chat(chat_dir)
    teacher = trained_lm(data, data.vocab_size, steps=5)
    directory = save_teacher_dir(teacher, tmp_path / "teacher", chat_dir["generation"] / "tokenizer.json")
    target = [build_target("token_logits", {"k": 8})]
    for name, model in (("memory", teacher), ("dir", CausalLM(data.vocab_size, path=str(directory), pad_token_id=1))):
        precompute(
            model.eval(),
            data,
            str(tmp_path / f"{name}.zarr"),
            targets=target,
            views=TokenViews(),
            num_classes=data.vocab_size,
            teacher_name="lm",
            batch_size=3,
            progress=False,
        )
    read = [
        next(
            iter(
                batch_loader(
                    CachedTokenDataset(
                        data, open_store(str(tmp_path / f"{n}.zarr")), teacher="lm", targets=["token_logits_topk"]
                    ),
                    batch_size=3,
                    seed=0,
                )
            )
        ).to("cpu")
        for n in ("memory", "dir")
    ]
    memory, from_dir = (r.targets["token_logits_topk"] for r in read)
    assert torch.equal(memory.indices, from_dir.indices) and torch.equal(memory.values, from_dir.values)
