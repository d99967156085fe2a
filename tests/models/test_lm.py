"""CausalLM: a transformers causal LM built from a config or a local directory, returning (B, L, V) logits, with
checkpoints that safetensors can write (tied embeddings) and refusals that name the fix."""

from __future__ import annotations

import hashlib

import pytest
import torch

from kdcache.checkpoint import load_model, save_model
from kdcache.errors import ConfigError
from kdcache.models import build_model
from kdcache.models.lm import CausalLM
from tests.lmkit import save_teacher_dir, tiny_lm


def test_built_from_a_config_it_returns_logits_per_position() -> None:
    model = tiny_lm(300).eval()
    logits = model(torch.randint(0, 300, (3, 10)))
    assert logits.shape == (3, 10, 300) and logits.dtype == torch.float32
    assert model.vocab_size == 300


def test_a_model_saved_with_save_pretrained_loads_from_its_directory(tmp_path) -> None:
    model = tiny_lm(300).eval()
    model.model.save_pretrained(tmp_path / "lm")
    loaded = build_model("causal-lm", 300, {"path": str(tmp_path / "lm"), "pad_token_id": 1}).eval()
    tokens = torch.randint(0, 300, (2, 12))
    assert torch.equal(loaded(tokens), model(tokens))
    with pytest.raises(ConfigError, match="has a vocabulary of 300 tokens, but 512 were asked for"):
        build_model("causal-lm", 512, {"path": str(tmp_path / "lm")})
    with pytest.raises(ConfigError, match="not a local model directory"):
        build_model("causal-lm", 300, {"path": str(tmp_path / "nowhere")})


def test_a_sharded_directory_loads_as_it_is_and_records_every_file(tmp_path, lm_tokenizer) -> None:
    """save_pretrained's sharded layout (model-0000x-of-0000y.safetensors + index) with its tokenizer: loaded as it
    is, every file that decides logits or ids hashed (generation_config.json does not), bfloat16 on request."""
    model = tiny_lm(300, layers=2).eval()
    directory = save_teacher_dir(model, tmp_path / "lm", lm_tokenizer)
    shards = sorted(p.name for p in directory.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (directory / "model.safetensors.index.json").is_file()
    loaded = CausalLM(300, path=str(directory)).eval()
    tokens = torch.randint(0, 300, (2, 12))
    assert torch.equal(loaded(tokens), model(tokens))
    files = loaded.source["files"]
    assert sorted(files) == sorted(
        ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", *shards]
    )
    assert files["config.json"] == hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    assert loaded.source["tokenizer"]["vocab_size"] == 300 and loaded.get_input_embeddings().num_embeddings == 300
    half = CausalLM(300, path=str(directory), dtype="bfloat16").eval()
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half(tokens).dtype == torch.bfloat16
    assert (half(tokens).float() - model(tokens)).abs().max() < 0.1  # bf16 rounding of the same weights
    with pytest.raises(ConfigError, match="dtype 'bf16' is not one of float32, bfloat16, float16"):
        CausalLM(300, path=str(directory), dtype="bf16")


def test_tied_embeddings_round_trip_through_safetensors(tmp_path) -> None:
    model = tiny_lm(300).eval()
    state = model.state_dict()
    assert model.model.lm_head.weight is model.model.transformer.wte.weight  # tied in the model
    assert state["model.lm_head.weight"].data_ptr() != state["model.transformer.wte.weight"].data_ptr()
    path = save_model(model, tmp_path / "lm.safetensors", spec={"arch": "causal-lm"})
    other = load_model(tiny_lm(300, seed=1), path).eval()
    tokens = torch.randint(0, 300, (2, 12))
    assert torch.equal(other(tokens), model(tokens))
    assert other.model.lm_head.weight is other.model.transformer.wte.weight  # still tied after loading


def test_right_padding_changes_no_real_position() -> None:
    model = tiny_lm(300).eval()
    tokens = torch.randint(2, 300, (1, 12))
    padded = tokens.clone()
    padded[0, 8:] = 1  # the pad id: masked, and after every real token
    assert torch.allclose(model(padded)[0, :8], model(tokens)[0, :8], atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "exactly one of `config`"),
        ({"config": {"n_layer": 1}}, "needs model_type"),
        ({"config": {"model_type": "gpt2", "vocab_size": 50}}, "has vocab_size 50 but the model is built for 300"),
        ({"config": {"model_type": "no-such-model"}}, "not valid for transformers"),
    ],
    ids=["neither", "no-model-type", "vocab-size", "unknown-type"],
)
def test_bad_arguments_are_refused(args, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CausalLM(300, **args)


def test_image_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"takes int64 token ids, got torch\.float32"):
        tiny_lm(300)(torch.zeros(2, 8))
