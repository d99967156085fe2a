"""A Hugging Face causal language model as a kdcache model: token ids ``(B, L)`` in, logits ``(B, L, V)`` out.

kdcache's teachers and students are ``nn.Module`` s whose forward takes the model input and returns logits; a
``transformers`` model takes keyword arguments and returns an output object. :class:`CausalLM` is the thin adapter,
built from a config (random weights, seeded by the caller's ``torch.manual_seed``) or from a local directory written
by ``save_pretrained`` (sharded or not) — never downloaded. A model loaded from a directory records the directory's
files (:func:`~kdcache.models.hfdir.directory_source`) as its ``source``, which stage one writes into the teacher's
fingerprint. ``transformers`` is imported only when one is built (``pip install kdcache[lm]``), so the vision path
never loads it.

Any other ``nn.Module`` returning ``(batch, positions, vocab)`` logits works as a teacher or student too, and so does
a raw ``transformers`` model (its output's ``.logits`` are read, :func:`kdcache.capture.forward_with_capture`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.models.hfdir import directory_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ModelDtype = Literal["float32", "bfloat16", "float16"]


def require_transformers() -> Any:
    """The ``transformers`` module, or an error that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "causal-lm models need the `transformers` library; install the language-model extra: "
            "pip install 'kdcache[lm]'"
        ) from None
    return transformers


class CausalLM(nn.Module):
    """``transformers.AutoModelForCausalLM`` with a vocabulary of ``num_classes`` tokens, returning its logits.

    Give exactly one of

    * ``config``: the keyword arguments of ``transformers.AutoConfig.for_model``, ``model_type`` included
      (``{model_type: gpt2, n_layer: 4, n_embd: 128, n_head: 4, n_positions: 128}``); the vocabulary size is
      ``num_classes``;
    * ``path``: a local directory holding a model saved with ``save_pretrained`` (one weights file or shards with
      their index); its vocabulary must be ``num_classes`` wide. Its files are fingerprinted (:attr:`source`).

    ``dtype`` (``bfloat16``, ``float16``) loads the weights in that precision: a teacher for stage one at half the
    memory and, on a GPU, faster; targets are computed from its logits in float32 either way.

    With ``pad_token_id`` the attention mask is ``input_ids != pad_token_id`` (pick a pad token that never occurs in
    text); without it every position is attended. Packed text is padded at the end only, and causal attention never
    looks ahead, so the mask changes no real position's logits either way; losses skip padded positions by label.

    Tied input/output embeddings are one tensor in the model but two entries of its state dict; ``state_dict``
    returns them as separate tensors, so safetensors (which refuses shared storage) can write every checkpoint.

    >>> teacher = CausalLM(1024, config={"model_type": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4})
    >>> teacher(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 1024])
    """

    def __init__(
        self,
        num_classes: int,
        *,
        config: dict[str, Any] | None = None,
        path: str | None = None,
        pad_token_id: int | None = None,
        dtype: ModelDtype | None = None,
    ) -> None:
        super().__init__()
        if (config is None) == (path is None):
            raise ConfigError(
                "causal-lm takes exactly one of `config` (a transformers config, random weights) or `path` (a local "
                "directory written by save_pretrained)"
            )
        self.pad_token_id = pad_token_id
        self.model: PreTrainedModel = (
            _from_config(num_classes, config, pad_token_id) if config is not None else _from_dir(num_classes, path)
        )
        self.source = None if path is None else directory_source(path)  # the files, as they were loaded
        if dtype is not None:
            # PreTrainedModel.to is typed as functools.wraps(nn.Module.to), the unbound function: call it as a Module
            module: nn.Module = self.model
            module.to(_torch_dtype(dtype))
        self.register_state_dict_post_hook(_untie)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (its rows are the token ids the model takes), as ``transformers`` models name it."""
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.is_floating_point():
            raise ConfigError(
                f"causal-lm takes int64 token ids, got {input_ids.dtype} inputs: use a text dataset with token views "
                "(kdcache.views.TokenViews), not image views"
            )
        mask = None if self.pad_token_id is None else (input_ids != self.pad_token_id).long()
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def _from_config(num_classes: int, config: dict[str, Any], pad_token_id: int | None) -> PreTrainedModel:
    transformers = require_transformers()
    options = dict(config)
    model_type = options.pop("model_type", None)
    if model_type is None:
        raise ConfigError("causal-lm config needs model_type (e.g. gpt2, llama), as in a config.json")
    if options.setdefault("vocab_size", num_classes) != num_classes:
        raise ConfigError(
            f"causal-lm config has vocab_size {options['vocab_size']} but the model is built for {num_classes} "
            "tokens (data.num_classes); leave vocab_size out of the config"
        )
    if pad_token_id is not None:
        options.setdefault("pad_token_id", pad_token_id)
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"causal-lm config {config} is not valid for transformers: {exc}") from None
    return transformers.AutoModelForCausalLM.from_config(hf_config)


def _from_dir(num_classes: int, path: str | None) -> PreTrainedModel:
    transformers = require_transformers()
    directory = Path(str(path))
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"causal-lm path {str(directory)!r} is not a local model directory (no config.json); models are never "
            "downloaded: save one with `model.save_pretrained(dir)` and point path at it"
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    if model.config.vocab_size != num_classes:
        raise ConfigError(
            f"the model at {str(directory)!r} has a vocabulary of {model.config.vocab_size} tokens, but "
            f"{num_classes} were asked for (data.num_classes); set num_classes to the model's vocabulary size"
        )
    return model


def _torch_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"causal-lm dtype {name!r} is not one of float32, bfloat16, float16")
    return getattr(torch, name)


def _untie(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, local_metadata: Any) -> None:
    """Give every state-dict entry of this module its own storage (tied embeddings share one tensor)."""
    del module, local_metadata
    seen: set[int] = set()
    for key in [k for k in state if k.startswith(prefix)]:
        tensor = state[key]
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            state[key] = tensor.clone()
        seen.add(pointer)
