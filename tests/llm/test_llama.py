"""The Llama-style LLM (``gr_jax.llm``): Hugging Face parity, RoPE, GQA, KV cache, LoRA, import errors.

Parity: ``tiny_checkpoint.py`` (beside this file, numpy only) writes two seeded random checkpoints,
a Llama layout (untied head, head_dim != hidden / heads, Llama 3.1 rope scaling) and a Qwen2 layout
(q/k/v biases, tied embeddings). ``llama_reference.json`` holds what ``transformers`` computes on
them for two prompts (the second left-padded): the logits at each row's last 4 positions, the
log-sum-exp of the logits at every real position, the rotary inverse frequencies, and a checksum of
the weights. It was made once, outside the repository, in a throwaway venv (torch 2.13.0+cpu,
transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6; gr_jax never imports torch or transformers)::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy
    /tmp/refvenv/bin/python make_llama_reference.py /work/main/tests/llm /work/main/tests/llm/llama_reference.json

with ``make_llama_reference.py``::

    import json, sys, tempfile
    import numpy as np, torch, transformers
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, sys.argv[1])  # tests/llm, for tiny_checkpoint
    import tiny_checkpoint as tc

    torch.set_num_threads(1)
    ids, mask = torch.tensor(tc.TOKENS), torch.tensor(tc.ATTENTION_MASK)
    out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "tokens": tc.TOKENS, "attention_mask": tc.ATTENTION_MASK, "last_positions": 4}
    for kind in ("llama", "qwen2"):
        model_dir = tc.write_checkpoint(kind, tempfile.mkdtemp())
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=torch.tensor(tc.position_ids())).logits
        logits = logits.double().numpy()
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        valid = np.asarray(tc.ATTENTION_MASK, bool)
        out[kind] = {"checksum": tc.checksum(tc.seeded_tensors(kind)),
                     "inv_freq": [float(x) for x in model.model.rotary_emb.inv_freq],
                     "logsumexp": [[float(f"{x:.8g}") for x in row[v]] for row, v in zip(lse, valid)],
                     "logits_last": [[[float(f"{x:.8g}") for x in pos] for pos in row[-4:]] for row in logits]}
    json.dump(out, open(sys.argv[2], "w"), separators=(",", ":"))

Measured: max |diff| / max |logit| 4.7e-7 (Llama) and 3.5e-7 (Qwen2), see ``test_hf_parity``'s
printout; the bound is 1e-4.
"""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import safetensors.numpy
import tiny_checkpoint as tc
import tokenizers
from flax import traverse_util
from jax.sharding import PartitionSpec

from configs.common import sharding_config, train_config
from gr_jax.llm import hf_import, lora
from gr_jax.llm.hf_import import CheckpointError
from gr_jax.llm.model import (
    LlamaConfig,
    LlamaModel,
    apply_rope,
    grouped_query_attention,
    param_shardings,
    positions_and_mask,
    rope_frequencies,
)
from gr_jax.models.layers.decoder import rope as decoder_rope
from gr_jax.params import is_frozen
from gr_jax.training.optim import make_optimizer
from gr_jax.training.sharding import logical_rules, make_mesh

REFERENCE = os.path.join(os.path.dirname(__file__), "llama_reference.json")
TOKENS = np.asarray(tc.TOKENS, np.int32)
VALID = np.asarray(tc.ATTENTION_MASK, bool)


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {kind: tc.write_checkpoint(kind, str(tmp_path_factory.mktemp(kind))) for kind in tc.CONFIGS}


@pytest.fixture(scope="module")
def llama(checkpoints):
    return hf_import.load_hf(checkpoints["llama"])


@functools.cache
def jitted_apply(config):
    return jax.jit(LlamaModel(config).apply)


def forward(config, params, tokens, valid):
    return jitted_apply(config)({"params": params}, tokens, *positions_and_mask(valid))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_parity(kind, checkpoints, reference):
    assert (reference["tokens"], reference["attention_mask"]) == (tc.TOKENS, tc.ATTENTION_MASK)
    ref = reference[kind]
    assert tc.checksum(tc.seeded_tensors(kind)) == pytest.approx(ref["checksum"], rel=1e-12), \
        "tiny_checkpoint no longer draws the weights the reference was computed on"
    config, params = hf_import.load_hf(checkpoints[kind])
    np.testing.assert_allclose(rope_frequencies(config), ref["inv_freq"], rtol=1e-6)

    logits = np.asarray(forward(config, params, TOKENS, VALID), np.float64)
    got_last = logits[:, -reference["last_positions"]:]
    want_last = np.asarray(ref["logits_last"])
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    got_lse, want_lse = np.concatenate([lse[r][VALID[r]] for r in range(2)]), np.concatenate(ref["logsumexp"])
    scale = np.abs(want_last).max()
    abs_diff = max(np.abs(got_last - want_last).max(), np.abs(got_lse - want_lse).max())
    print(f"{kind}: max |diff| {abs_diff:.2e}, relative to max |logit| {scale:.1f}: {abs_diff / scale:.2e}")
    assert abs_diff <= 1e-4 * scale
    np.testing.assert_allclose(got_last, want_last, rtol=1e-4, atol=1e-4 * scale)


def test_config_and_tensor_layout(checkpoints):
    llama = hf_import.read_config(checkpoints["llama"])
    assert (llama.head_dim, llama.rope_type, llama.rope_original_max_positions, llama.tie_word_embeddings,
            llama.attention_bias) == (32, "llama3", 64, False, False)
    qwen = hf_import.read_config(checkpoints["qwen2"], dtype=jnp.bfloat16)
    assert (qwen.head_dim, qwen.tie_word_embeddings, qwen.attention_bias, qwen.output_bias, qwen.dtype) == (
        16, True, True, False, jnp.bfloat16)
    for config in (llama, qwen):  # the import fills exactly the tree that LlamaModel.init makes
        expected = jax.eval_shape(lambda c=config: nn.meta.unbox(LlamaModel(c).init(
            jax.random.PRNGKey(0), TOKENS, *positions_and_mask(VALID))["params"]))
        names = {m.name for m in hf_import.tensor_mappings(config)}
        model_type = "qwen2" if config.attention_bias else "llama"
        assert names == set(tc.tensor_shapes(tc.CONFIGS[model_type]))
        assert traverse_util.flatten_dict(expected).keys() == {m.path for m in hf_import.tensor_mappings(config)}


def test_save_hf_round_trip(tmp_path, checkpoints, llama):
    config, params = llama
    sharded = str(tmp_path / "sharded")
    hf_import.save_hf(sharded, config, params, "llama", max_shard_bytes=60_000)
    assert os.path.isfile(os.path.join(sharded, hf_import.INDEX_FILE))
    assert not os.path.exists(os.path.join(sharded, hf_import.WEIGHTS_FILE))
    written = {}
    for name in os.listdir(sharded):
        if name.endswith(".safetensors"):
            written |= safetensors.numpy.load_file(os.path.join(sharded, name))
    original = tc.seeded_tensors("llama")
    assert written.keys() == original.keys()
    assert all(np.array_equal(written[k], original[k]) for k in original)
    assert hf_import.read_config(sharded) == config
    _, again = hf_import.load_hf(sharded)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, params))

    # bfloat16 storage goes through save and load unchanged (numpy has no bfloat16 of its own).
    qwen, qwen_params = hf_import.load_hf(checkpoints["qwen2"], param_dtype=jnp.bfloat16)
    hf_import.save_hf(str(tmp_path / "bf16"), qwen, qwen_params, "qwen2")
    _, loaded = hf_import.load_hf(str(tmp_path / "bf16"), param_dtype=jnp.bfloat16)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype == jnp.bfloat16 and np.array_equal(a, b),
                                     loaded, qwen_params))
    with pytest.raises(ValueError, match="q/k/v biases"):
        hf_import.save_hf(str(tmp_path / "wrong"), config, params, "qwen2")


def test_tokenizer_loads(tmp_path):
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "<a_12>": 5}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert hf_import.load_tokenizer(str(tmp_path)).encode("hello <a_12> world again").ids == [3, 5, 4, 0]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        hf_import.load_tokenizer(str(tmp_path / "missing"))


def numpy_rope(x, positions, inv_freq):
    """HF's formula: ``x cos + rotate_half(x) sin`` with the frequencies repeated over both halves."""
    angles = positions[..., None] * np.concatenate([inv_freq, inv_freq])  # [B, T, D]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * np.cos(angles)[:, :, None] + rotated * np.sin(angles)[:, :, None]


def test_rope_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 16)).astype(np.float32)
    positions = rng.integers(0, 500, (2, 7))
    config = LlamaConfig(num_heads=3, num_kv_heads=3, head_dim=16, rope_theta=500.0)
    inv_freq = np.asarray(500.0 ** (-np.arange(8) / 8))
    np.testing.assert_allclose(rope_frequencies(config), inv_freq, rtol=1e-6)
    want = numpy_rope(x.astype(np.float64), positions, inv_freq)
    np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(positions), rope_frequencies(config)),
                               want, atol=2e-4)
    # The SID decoder's rope (gr_jax.models.layers.decoder) uses the same layout.
    np.testing.assert_allclose(decoder_rope(jnp.asarray(x), jnp.asarray(positions), 500.0), want, atol=2e-4)


def test_grouped_query_attention_matches_numpy():
    rng = np.random.default_rng(1)
    batch, length, source, heads, kv_heads, dim = 2, 5, 6, 6, 2, 8
    q = rng.standard_normal((batch, length, heads, dim)).astype(np.float32)
    k, v = (rng.standard_normal((batch, source, kv_heads, dim)).astype(np.float32) for _ in range(2))
    mask = rng.random((batch, length, source)) < 0.6
    mask[..., 0] = True
    got = grouped_query_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
    want = np.zeros_like(q)
    group = heads // kv_heads
    for b in range(batch):
        for h in range(heads):
            scores = q[b, :, h] @ k[b, :, h // group].T / np.sqrt(dim)
            scores = np.where(mask[b], scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            want[b, :, h] = (weights / weights.sum(-1, keepdims=True)) @ v[b, :, h // group]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_kv_cache_decoding_equals_full_forward(llama):
    config, params = llama
    model = LlamaModel(config)
    # Row 0 is left-padded, row 1 right-padded: the cache holds the padding as invalid slots.
    prompt = np.asarray([[0, 0, 7, 9, 11, 4], [3, 8, 5, 0, 0, 0]], np.int32)
    prompt_valid = np.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
    new = np.asarray([[13, 2, 90, 6], [40, 41, 1, 127]], np.int32)
    steps, length = new.shape[1], prompt.shape[1]

    @jax.jit
    def decode(params):
        variables = {"params": params}
        first, cache = model.apply(variables, prompt, prompt_valid, length + steps, method="prefill")
        start = jnp.sum(prompt_valid, axis=1)

        def step(cache, inputs):
            token, t = inputs
            logits, cache = model.apply(variables, token, start + t, cache, length + t, method="step")
            return cache, logits

        cache, logits = jax.lax.scan(step, cache, (jnp.asarray(new.T), jnp.arange(steps)))
        return first, jnp.swapaxes(logits, 0, 1), cache

    first, stepped, cache = decode(params)
    full = forward(config, params, np.concatenate([prompt, new], 1), np.concatenate([prompt_valid, new > -1], 1))
    last_prompt = np.asarray([length - 1, 2])
    np.testing.assert_allclose(first, full[np.arange(2), last_prompt], atol=1e-4)
    np.testing.assert_allclose(stepped, full[:, length:], atol=1e-4)
    assert cache.layers[0].key.shape == (2, length + steps, config.num_kv_heads, config.head_dim)
    np.testing.assert_array_equal(cache.valid, np.concatenate([prompt_valid, np.ones_like(new, bool)], 1))


def test_bfloat16_compute_stays_close_to_float32(checkpoints, llama):
    config, params = llama
    half, half_params = hf_import.load_hf(checkpoints["llama"], dtype=jnp.bfloat16)
    exact = forward(config, params, TOKENS, VALID)
    prefill = jax.jit(functools.partial(LlamaModel(half).apply, method="prefill"), static_argnums=3)
    logits, cache = prefill({"params": half_params}, TOKENS, VALID, 16)
    assert logits.dtype == jnp.float32 and cache.layers[0].key.dtype == jnp.bfloat16
    assert np.abs(logits - exact[:, -1]).max() < 0.03 * np.abs(exact).max()


LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")


def test_lora_at_init_equals_base_and_merges(llama):
    config, base = llama
    lora_config = dataclasses.replace(config, lora_rank=4, lora_alpha=8.0, lora_targets=LORA_TARGETS)
    params = lora.with_adapters(base, lora_config, jax.random.PRNGKey(0))
    expected = jax.eval_shape(lambda: nn.meta.unbox(LlamaModel(lora_config).init(
        jax.random.PRNGKey(0), TOKENS, *positions_and_mask(VALID))["params"]))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    adapters = [p for p in traverse_util.flatten_dict(params, sep="/") if lora.is_adapter(p)]
    assert len(adapters) == 2 * len(LORA_TARGETS) * config.num_layers

    base_logits = forward(config, base, TOKENS, VALID)
    np.testing.assert_array_equal(forward(lora_config, params, TOKENS, VALID), base_logits)  # B = 0

    flat = traverse_util.flatten_dict(params, sep="/")
    rng = np.random.default_rng(0)
    for path in sorted(p for p in flat if p.endswith("lora_b")):
        flat[path] = 0.1 * rng.standard_normal(flat[path].shape, np.float32)
    tuned = traverse_util.unflatten_dict(flat, sep="/")
    tuned_logits = forward(lora_config, tuned, TOKENS, VALID)
    assert np.abs(tuned_logits - base_logits).max() > 1e-2
    merged_config, merged = lora.merge_adapters(tuned, lora_config)
    assert merged_config == dataclasses.replace(lora_config, lora_rank=0)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    # With lora_rank = 0, alpha and targets do not matter: the base config runs the merged model.
    np.testing.assert_allclose(forward(config, merged, TOKENS, VALID), tuned_logits, atol=1e-4)
    with pytest.raises(ValueError, match="merge"):
        hf_import.save_hf("/nonexistent", lora_config, tuned)


def test_only_adapters_train(llama):
    config, base = llama
    lora_config = dataclasses.replace(config, lora_rank=2, lora_targets=LORA_TARGETS)
    params = lora.with_adapters(base, lora_config, jax.random.PRNGKey(0))
    patterns = lora.lora_frozen_patterns()
    trainable = lora.trainable_paths(params, patterns)
    assert trainable and all(lora.is_adapter(p) for p in trainable)
    assert len(trainable) == 2 * len(LORA_TARGETS) * config.num_layers

    # The trainer's optimizer with train.frozen = these patterns updates the adapters only.
    train = train_config()
    train.frozen = patterns
    train.warmup_steps = 0
    optimizer = make_optimizer(train, total_steps=10)

    @jax.jit
    def one_step(params):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    moved = one_step(params)
    for path, (old, new) in traverse_util.flatten_dict(jax.tree.map(lambda a, b: (a, b), params, moved),
                                                       sep="/").items():
        assert np.array_equal(old, new) != lora.is_adapter(path), path

    # Scoped under a bigger model, a sibling module stays trainable.
    scoped = lora.lora_frozen_patterns("llm")
    assert not is_frozen("item_head/kernel", scoped)
    assert is_frozen("llm/lm_head/kernel", scoped) and is_frozen("llm/embed_tokens/embedding", scoped)
    assert not is_frozen("llm/layers_1/self_attn/q_proj/lora_b", scoped)


def test_params_shard_by_logical_axes(checkpoints, llama):
    config, params = llama
    mesh = make_mesh(ml_collections.ConfigDict({"data": -1, "model": 2}))
    rules = logical_rules(ml_collections.ConfigDict({"sharding": sharding_config()}))
    shardings = param_shardings(config, mesh, rules)
    _, placed = hf_import.load_hf(checkpoints["llama"], shardings=shardings)
    q = placed["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == PartitionSpec(None, "model", None)
    assert placed["lm_head"]["kernel"].sharding.spec == PartitionSpec(None, "model")
    assert placed["layers_1"]["mlp"]["down_proj"]["kernel"].sharding.spec == PartitionSpec("model", None)
    assert jax.tree.all(jax.tree.map(np.array_equal, placed, params))


def write_config(tmp_path, **changes):
    raw = {**tc.CONFIGS["llama"], **changes}
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return str(tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "gpt2"}, r"config\.json: model_type 'gpt2' is not supported \(supported: llama, qwen2\)"),
    ({"model_type": "qwen2", "use_sliding_window": True}, r"config\.json: use_sliding_window=true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"config\.json: rope type 'yarn'"),
    ({"hidden_act": "gelu"}, r"config\.json: hidden_act 'gelu'"),
    ({"num_hidden_layers": None}, r"config\.json: required field 'num_hidden_layers' is missing"),
    ({"num_key_value_heads": 3}, r"config\.json: num_kv_heads=3 must divide num_heads=4"),
])
def test_unsupported_config_is_refused(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        hf_import.read_config(write_config(tmp_path, **changes))


def test_incomplete_weights_are_refused(tmp_path):
    tensors = tc.seeded_tensors("llama")
    model_dir = write_config(tmp_path / "missing")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(tensors, os.path.join(model_dir, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj"):
        hf_import.load_hf(model_dir)

    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 32), np.float32)
    model_dir = write_config(tmp_path / "shape")
    safetensors.numpy.save_file(tensors, os.path.join(model_dir, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(128, 32\)"):
        hf_import.load_hf(model_dir)

    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        hf_import.load_hf(write_config(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        hf_import.load_hf(str(tmp_path / "nothing"))
