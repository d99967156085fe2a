"""``transformers.Trainer`` distils a ``transformers`` student from a real kdcache store: the loss it minimises is
kdcache's own on the same batch, it trains across epochs, and a student of another vocabulary is refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedTokenDataset
from kdcache.views import TokenViews
from tests.conftest import ROOT
from tests.lmkit import tiny_lm

pytest.importorskip("accelerate", reason="the hf extra: pip install 'kdcache[hf]'")
from transformers import TrainingArguments

from kdcache.train.hf import KDTrainer

TARGETS = ["token_logits_topk", "token_logits_sampled"]


@pytest.fixture
def cached(tmp_path, lm_teacher, lm_train):
    url = str(tmp_path / "lm.zarr")
    targets = [
        build_target("token_logits", {"k": 8, "temperatures": [1.0, 2.0]}),
        build_target("token_logits", {"encoding": "sampled", "samples": 8}),
    ]
    precompute(
        lm_teacher,
        lm_train,
        url,
        targets=targets,
        views=TokenViews(),
        num_classes=lm_train.vocab_size,
        teacher_name="lm",
        shard_samples=64,
        batch_size=16,
        progress=False,
    )
    return CachedTokenDataset(lm_train, open_store(url), teacher="lm", targets=TARGETS, vocab_size=300)


def arguments(tmp_path, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )


@pytest.mark.parametrize("target", TARGETS)
def test_the_trainer_loss_equals_kdcache_own_loss_on_the_same_batch(tmp_path, cached, target):
    student = tiny_lm(300, seed=3).model  # a raw transformers GPT2LMHeadModel, as its users have it
    losses = [
        ("next_token", 0.5, {}),
        ("token_kd", 0.5, {"target": target, "temperature": 2.0 if target.endswith("topk") else 1.0}),
    ]
    trainer = KDTrainer(model=student, args=arguments(tmp_path, 1), train_dataset=cached, losses=losses)
    inputs = next(iter(trainer.get_train_dataloader()))
    from_trainer = trainer.compute_loss(student, inputs)
    indices = inputs["kd_batch"].indices.numpy()
    own = cached[indices].to("cpu")  # kdcache's batch path over the same samples
    mask = cached.dataset.attention_mask(indices)  # 0 at padding, as kdcache's CausalLM masks it
    objective = build_objective(losses, LossSetup(num_classes=300, task="language-model"))
    logits = student(input_ids=own.inputs, attention_mask=mask).logits
    by_hand, parts = objective(StepOutputs(logits, own.labels, teacher=own.targets))
    assert torch.equal(own.inputs, inputs["input_ids"]) and torch.equal(mask, inputs["attention_mask"])
    assert parts["token_kd"] > 0
    assert abs(from_trainer.item() - by_hand.item()) < 1e-6


def test_the_trainer_trains_across_epochs_from_the_store(tmp_path, cached):
    student = tiny_lm(300, seed=3).model
    steps = 2 * -(-len(cached) // 8) + 1  # into a third epoch: the dataset is told each epoch
    trainer = KDTrainer(model=student, args=arguments(tmp_path, steps), train_dataset=cached)
    result = trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == steps and cached.epoch == 2
    assert np.isfinite(result.training_loss) and np.mean(logged[-3:]) < logged[0]  # it learns from the targets


def test_the_trainer_evaluates_on_another_cached_dataset(tmp_path, cached, lm_train):
    store = open_store(cached.url)
    evals = CachedTokenDataset(lm_train, store, teacher="lm", targets=TARGETS[:1], vocab_size=300)  # other source
    losses = [("next_token", 0.5, {}), ("token_kd", 0.5, {"target": TARGETS[0]})]
    trainer = KDTrainer(
        model=tiny_lm(300, seed=3).model,
        args=arguments(tmp_path, 1),
        train_dataset=cached,
        eval_dataset=evals,
        losses=losses,
    )
    inputs = next(iter(trainer.get_eval_dataloader()))
    assert sorted(inputs["kd_batch"].targets) == TARGETS[:1]  # collated by the eval dataset, not the train one
    assert np.isfinite(trainer.evaluate()["eval_loss"])


def test_a_student_of_another_vocabulary_is_refused(tmp_path, cached):
    trainer = KDTrainer(model=tiny_lm(320, seed=3).model, args=arguments(tmp_path, 1), train_dataset=cached)
    with pytest.raises(TargetMismatchError, match=r"vocabulary of 300 tokens.*320 wide"):
        trainer.train()


def test_a_dataset_without_a_store_is_refused(tmp_path, lm_train):
    with pytest.raises(ConfigError, match="CachedTokenDataset"):
        KDTrainer(model=tiny_lm(300).model, args=arguments(tmp_path, 1), train_dataset=lm_train)


def test_a_collator_that_drops_the_targets_is_refused(tmp_path, cached):
    from transformers import DataCollatorForLanguageModeling

    tokenizer = transformers_tokenizer(cached)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # a Trainer user's usual collator: no targets
    trainer = KDTrainer(
        model=tiny_lm(300).model,
        args=arguments(tmp_path, 1),
        train_dataset=cached,
        data_collator=lambda items: collator([{"input_ids": item["inputs"]} for item in items]),
    )
    with pytest.raises(ConfigError, match="not kd_batch and attention_mask: keep its KDCollator"):
        trainer.train()


def test_trl_sft_trainer_refuses_the_cached_dataset(tmp_path, cached):
    """What docs/language-models.md says of TRL: SFTTrainer takes only a ``datasets`` dataset it prepares itself."""
    import trl  # in the dev extra

    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, report_to=[], use_cpu=True)
    with pytest.raises(TypeError, match="must be a `Dataset` or `IterableDataset`, got `CachedTokenDataset`"):
        trl.SFTTrainer(
            model=tiny_lm(300).model, args=config, train_dataset=cached, processing_class=transformers_tokenizer(cached)
        )


def transformers_tokenizer(cached: CachedTokenDataset):
    """The store's tokenizer.json as a ``transformers`` tokenizer (what a collator or TRL takes)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=cached.dataset.tokenizer.tokenizer, pad_token="<|endoftext|>")


def test_the_docs_trainer_example_runs(tmp_path, monkeypatch, lm_teacher, lm_train):
    text = (ROOT / "docs" / "language-models.md").read_text()
    section = text.split("## The Hugging Face Trainer")[1].split("\n## ")[0]
    (block,) = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    precompute(
        lm_teacher,
        lm_train,
        "runs/my_lm/store.zarr",
        targets=[build_target("token_logits", {"k": 8})],
        views=TokenViews(),
        num_classes=300,
        teacher_name="my-gpt2",
        batch_size=16,
        progress=False,
    )
    tiny_lm(300, seed=3).model.save_pretrained("students/tiny")
    namespace = {"train": lm_train}
    exec(compile(block.replace("max_steps=1000", "max_steps=2"), "docs/language-models.md", "exec"), namespace)
    assert (tmp_path / "runs" / "hf_student").is_dir()
