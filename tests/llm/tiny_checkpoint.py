"""Tiny seeded Hugging Face checkpoints (Llama and Qwen2 layouts) written with numpy alone.

Shared by ``test_llama.py`` and the one-off script that made ``llama_reference.json`` with
``transformers`` (see that test's docstring), so it imports only numpy and safetensors: no JAX, no
gr_jax, no PyTorch. Every tensor is drawn from its own generator, seeded by the CRC-32 of
``"<kind>/<tensor name>"``, so the weights do not depend on the order of writing.
"""

import json
import os
import zlib

import numpy as np
import safetensors.numpy

CONFIGS = {
    # Untied head, explicit head_dim != hidden / heads, Llama 3.1 rope scaling with a small original
    # context so that some frequencies are kept, some blended and some divided.
    "llama": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
        "max_position_embeddings": 512, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    },
    # q/k/v biases, tied embeddings, head_dim implied by hidden / heads.
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": True, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 2, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    },
}

# Two prompts of 12 tokens; the second is left-padded by 4 (its attention mask is 0 there).
TOKENS = [[5, 17, 99, 3, 64, 127, 8, 42, 42, 71, 0, 33], [0, 0, 0, 0, 88, 12, 5, 5, 120, 9, 61, 30]]
ATTENTION_MASK = [[1] * 12, [0] * 4 + [1] * 8]


def position_ids(mask=ATTENTION_MASK):
    """0 at each row's first real token (as ``gr_jax.llm.positions_and_mask``)."""
    return np.maximum(np.cumsum(np.asarray(mask), axis=1) - 1, 0).tolist()


def tensor_shapes(config):
    """Hugging Face tensor name -> shape, in a fixed order."""
    d, v, inner = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // heads
    qkv_bias = config["model_type"] == "qwen2" or config.get("attention_bias", False)
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        for name, rows in (("q_proj", heads * head_dim), ("k_proj", kv * head_dim), ("v_proj", kv * head_dim)):
            shapes[p + f"self_attn.{name}.weight"] = (rows, d)
            if qkv_bias:
                shapes[p + f"self_attn.{name}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (d, heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (inner, d)
        shapes[p + "mlp.up_proj.weight"] = (inner, d)
        shapes[p + "mlp.down_proj.weight"] = (d, inner)
    shapes["model.norm.weight"] = (d,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def seeded_tensors(kind):
    """The float32 tensors of checkpoint ``kind``: unit-variance embeddings, 1/sqrt(fan-in) linear
    weights, biases of scale 0.3 and norm weights around 1, so the logits are O(1)."""
    tensors = {}
    for name, shape in tensor_shapes(CONFIGS[kind]).items():
        rng = np.random.default_rng(zlib.crc32(f"{kind}/{name}".encode()))
        x = rng.standard_normal(shape)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.2 * x
        elif name.endswith(".bias"):
            x = 0.3 * x
        elif name != "model.embed_tokens.weight":
            x = x / np.sqrt(shape[1])
        tensors[name] = x.astype(np.float32)
    return tensors


def checksum(tensors):
    """Sum of |weights| in float64: catches a change of the generator behind a parity failure."""
    return float(sum(np.abs(t.astype(np.float64)).sum() for t in tensors.values()))


def write_checkpoint(kind, model_dir):
    """Writes ``config.json`` and ``model.safetensors`` of checkpoint ``kind`` into ``model_dir``."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(CONFIGS[kind], f, indent=2)
    safetensors.numpy.save_file(seeded_tensors(kind), os.path.join(model_dir, "model.safetensors"),
                                metadata={"format": "pt"})
    return model_dir
