"""Hugging Face Llama / Qwen2 checkpoints in a local directory <-> ``LlamaModel`` parameters.

Reads ``config.json``, ``model.safetensors`` (or the shards listed by
``model.safetensors.index.json``) and ``tokenizer.json`` with the ``safetensors`` numpy API and the
``tokenizers`` library: no PyTorch, no download. ``save_hf`` writes the same layout back, so a
fine-tuned model (adapters merged) opens in ``transformers`` and tests can write small checkpoints.

    config, params = load_hf("/models/Qwen2.5-0.5B", dtype=jnp.bfloat16)
    logits = LlamaModel(config).apply({"params": params}, tokens, *positions_and_mask(valid))

Anything this importer cannot reproduce exactly (another architecture, sliding-window attention,
rope scaling other than Llama 3's, MLP biases, ...) is refused with a one-line ``CheckpointError``
naming the file and the field, rather than loaded into a silently different model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers
from flax import traverse_util
from safetensors import safe_open

from gr_jax.llm.lora import is_adapter
from gr_jax.llm.model import LlamaConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class CheckpointError(ValueError):
    """A checkpoint this importer does not support or that is incomplete; the message names the file."""


# ----------------------------------------------------------------------------------------------
# config.json <-> LlamaConfig


def config_from_hf(raw: dict, source: str = CONFIG_FILE, **overrides) -> LlamaConfig:
    """``LlamaConfig`` of a Hugging Face ``config.json`` dict; ``overrides`` set our own fields
    (``dtype``, ``param_dtype``, ``lora_rank``, ...)."""
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: "
                              f"{', '.join(MODEL_TYPES)})")

    def required(name):
        if raw.get(name) is None:
            raise CheckpointError(f"{source}: required field {name!r} is missing")
        return raw[name]

    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
    if raw.get("mlp_bias"):
        raise CheckpointError(f"{source}: mlp_bias=true is not supported")
    if model_type == "qwen2" and raw.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true (sliding-window attention) is not supported")
    # transformers 5 writes rope_parameters; older files have rope_theta and an optional rope_scaling.
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(f"{source}: rope type {rope_type!r} (rope_scaling / rope_parameters) is not "
                              f"supported (supported: default, llama3)")
    if rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: partial_rotary_factor != 1 is not supported")

    heads = required("num_attention_heads")
    qkv_bias = model_type == "qwen2" or bool(raw.get("attention_bias", False))
    fields = dict(
        vocab_size=required("vocab_size"), hidden_size=required("hidden_size"),
        intermediate_size=required("intermediate_size"), num_layers=required("num_hidden_layers"),
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or required("hidden_size") // heads,
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10_000.0))), rope_type=rope_type,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias, output_bias=model_type == "llama" and qkv_bias,
        max_position_embeddings=raw.get("max_position_embeddings", 4096))
    if rope_type == "llama3":
        fields.update(rope_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_positions=int(rope.get("original_max_position_embeddings",
                                                               fields["max_position_embeddings"])))
    try:
        return LlamaConfig(**(fields | overrides))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_hf(config: LlamaConfig, model_type: str = "llama") -> dict:
    """The ``config.json`` dict of ``config`` for ``model_type`` "llama" or "qwen2"."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    if model_type == "qwen2" and (not config.attention_bias or config.output_bias):
        raise ValueError("a qwen2 checkpoint has q/k/v biases and no o_proj bias: set attention_bias=True, "
                         "output_bias=False")
    if model_type == "llama" and config.attention_bias != config.output_bias:
        raise ValueError("Llama's attention_bias covers q/k/v and o_proj alike: attention_bias must equal output_bias")
    raw = {
        "architectures": [MODEL_TYPES[model_type]], "model_type": model_type, "hidden_act": "silu",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "rope_scaling": None, "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "torch_dtype": jnp.dtype(config.param_dtype).name,
    }
    if model_type == "llama":
        raw |= {"attention_bias": config.attention_bias, "mlp_bias": False}
    if config.rope_type == "llama3":
        raw["rope_scaling"] = {"rope_type": "llama3", "factor": config.rope_factor,
                               "low_freq_factor": config.rope_low_freq_factor,
                               "high_freq_factor": config.rope_high_freq_factor,
                               "original_max_position_embeddings": config.rope_original_max_positions}
    return raw


def read_config(model_dir: str, **overrides) -> LlamaConfig:
    """``LlamaConfig`` of ``model_dir/config.json``."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a Hugging Face model directory holds {CONFIG_FILE}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return config_from_hf(raw, path, **overrides)


# ----------------------------------------------------------------------------------------------
# Tensor names and layouts


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One Hugging Face tensor and the Flax parameter it becomes."""

    path: tuple[str, ...]  # Flax parameter path
    name: str  # Hugging Face tensor name
    shape: tuple[int, ...]  # Flax shape
    hf_shape: tuple[int, ...]
    linear: bool  # an nn.Linear weight: stored [out, in], our kernel is [in..., out...]

    def to_flax(self, tensor: np.ndarray) -> np.ndarray:
        return (tensor.T if self.linear else tensor).reshape(self.shape)

    def to_hf(self, param: np.ndarray) -> np.ndarray:
        if self.linear:
            return param.reshape(self.hf_shape[1], self.hf_shape[0]).T
        return param.reshape(self.hf_shape)


def tensor_mappings(config: LlamaConfig) -> list[TensorMapping]:
    """Every base parameter of ``LlamaModel(config)`` with its Hugging Face name and layout."""
    c = config
    d, q, kv = c.hidden_size, (c.num_heads, c.head_dim), (c.num_kv_heads, c.head_dim)
    out = [TensorMapping(("embed_tokens", "embedding"), "model.embed_tokens.weight", (c.vocab_size, d),
                         (c.vocab_size, d), False)]

    def linear(path, name, in_shape, out_shape, bias):
        out.append(TensorMapping(path + ("kernel",), name + ".weight", in_shape + out_shape,
                                 (math.prod(out_shape), math.prod(in_shape)), True))
        if bias:
            out.append(TensorMapping(path + ("bias",), name + ".bias", out_shape, (math.prod(out_shape),), False))

    for i in range(c.num_layers):
        layer, name = (f"layers_{i}",), f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out.append(TensorMapping(layer + (norm, "weight"), f"{name}.{norm}.weight", (d,), (d,), False))
        for proj, shape in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            linear(layer + ("self_attn", proj), f"{name}.self_attn.{proj}", (d,), shape, c.attention_bias)
        linear(layer + ("self_attn", "o_proj"), f"{name}.self_attn.o_proj", q, (d,), c.output_bias)
        for proj in ("gate_proj", "up_proj"):
            linear(layer + ("mlp", proj), f"{name}.mlp.{proj}", (d,), (c.intermediate_size,), False)
        linear(layer + ("mlp", "down_proj"), f"{name}.mlp.down_proj", (c.intermediate_size,), (d,), False)
    out.append(TensorMapping(("norm", "weight"), "model.norm.weight", (d,), (d,), False))
    if not c.tie_word_embeddings:
        linear(("lm_head",), "lm_head", (d,), (c.vocab_size,), False)
    return out


# ----------------------------------------------------------------------------------------------
# Loading


def _tensor_files(model_dir: str) -> tuple[dict[str, str], str]:
    """Tensor name -> safetensors file, and the file that lists them (for messages)."""
    single, index = os.path.join(model_dir, WEIGHTS_FILE), os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(single):
        with safe_open(single, framework="numpy") as f:
            return dict.fromkeys(f.keys(), single), single
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        return {name: os.path.join(model_dir, file) for name, file in weight_map.items()}, index
    raise FileNotFoundError(f"{model_dir} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def _read_tensor(handle, path: str, name: str) -> np.ndarray:
    if handle.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16: read it through JAX on the host
        with jax.default_device(jax.devices("cpu")[0]), safe_open(path, framework="flax") as f:
            return np.asarray(f.get_tensor(name))
    return handle.get_tensor(name)


def load_params(model_dir: str, config: LlamaConfig, shardings=None) -> dict:
    """The base parameters of ``LlamaModel(config)`` (a plain nested dict, ``config.param_dtype``)
    from the safetensors of ``model_dir``. ``shardings`` (a tree like the params, e.g.
    ``model.param_shardings``) places each tensor as it is read, so the host holds one at a time."""
    mappings = tensor_mappings(config)
    files, listing = _tensor_files(model_dir)
    missing = [m.name for m in mappings if m.name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{listing}: missing tensor {missing[0]!r}{more}")
    placement = traverse_util.flatten_dict(shardings) if shardings is not None else {}
    by_file = defaultdict(list)
    for m in mappings:
        by_file[files[m.name]].append(m)
    flat = {}
    for path, group in by_file.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} (listed in {listing}) not found")
        with safe_open(path, framework="numpy") as f:
            for m in group:
                tensor = _read_tensor(f, path, m.name)
                if tuple(tensor.shape) != m.hf_shape:
                    raise CheckpointError(f"{path}: tensor {m.name!r} has shape {tuple(tensor.shape)}, "
                                          f"{CONFIG_FILE} implies {m.hf_shape}")
                param = m.to_flax(tensor).astype(config.param_dtype)
                flat[m.path] = jax.device_put(param, placement.get(m.path))
    return traverse_util.unflatten_dict(flat)


def load_hf(model_dir: str, shardings=None, **overrides) -> tuple[LlamaConfig, dict]:
    """``(config, params)`` of a local Hugging Face Llama or Qwen2 directory; ``overrides`` set our
    own config fields (``dtype``, ``param_dtype``, LoRA: add adapters with ``lora.with_adapters``)."""
    config = read_config(model_dir, **overrides)
    return config, load_params(model_dir, config, shardings)


def load_tokenizer(model_dir: str) -> tokenizers.Tokenizer:
    """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json``."""
    path = os.path.join(model_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the Hugging Face 'fast' tokenizer file is needed")
    return tokenizers.Tokenizer.from_file(path)


def read_token_embeddings(model_dir: str) -> np.ndarray:
    """The input token table ``[vocab, hidden]`` (float32) of a checkpoint, without reading the rest."""
    name = "model.embed_tokens.weight"
    files, listing = _tensor_files(model_dir)
    if name not in files:
        raise CheckpointError(f"{listing}: missing tensor {name!r}")
    with safe_open(files[name], framework="numpy") as f:
        return np.asarray(_read_tensor(f, files[name], name), np.float32)


# ----------------------------------------------------------------------------------------------
# Saving


def save_hf(model_dir: str, config: LlamaConfig, params: dict, model_type: str = "llama",
            max_shard_bytes: int | None = None) -> None:
    """Writes ``config.json`` and the weights (one ``model.safetensors``, or shards of at most
    ``max_shard_bytes`` with ``model.safetensors.index.json``) that ``transformers`` opens as
    ``model_type``. Adapters must be merged first (``lora.merge_adapters``)."""
    raw = config_to_hf(config, model_type)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    if any(is_adapter("/".join(path)) for path in flat):
        raise ValueError("params hold LoRA adapters: merge them first with gr_jax.llm.lora.merge_adapters")
    tensors = {m.name: np.ascontiguousarray(m.to_hf(np.asarray(flat[m.path]))) for m in tensor_mappings(config)}
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        json.dump(raw, f, indent=2)
    total = sum(t.nbytes for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        safetensors.numpy.save_file(tensors, os.path.join(model_dir, WEIGHTS_FILE), metadata={"format": "pt"})
        return
    shards, size = [{}], 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, os.path.join(model_dir, file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    with open(os.path.join(model_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
