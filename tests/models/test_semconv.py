"""Semantic Convergence's LLM recommender on a hand-made catalogue: the KV-cache beam search equals
exhaustive teacher-forced scoring, aligned code rows initialise the token table, the task mixture
trains, LoRA freezes the base transformer, and a ``configs/semconv.py:tiny`` run goes from features
to the served cache."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import semconv as semconv_config
from gr_jax import stages
from gr_jax.data.dataset import ItemTable
from gr_jax.llm import prompts, vocab
from gr_jax.llm.model import positions_and_mask
from gr_jax.models.semconv import SemConvRecommender
from gr_jax.params import is_frozen
from gr_jax.serving import TopKCache
from gr_jax.tokenizers.sid_table import SIDTable

TITLES = ["Nitrile lab gloves", "Glass beaker 250 ml", "Digital caliper", "Safety goggles", "Pipette tips"]
CATEGORIES = [("Science", "Safety"), ("Science", "Labware"), ("Tools",), ("Science", "Safety"), ("Science",)]
CODES = np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0], [0, 1, 0], [1, 2, 1]])
SIZES = (3, 3, 3)


def model_config(**overrides) -> ml_collections.ConfigDict:
    c = semconv_config.model_config()
    c.update(semconv_config.TINY_LLM)
    c.update(history_items=2, num_candidates=3, max_title_tokens=16, max_query_tokens=16, beam_size=5)
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llm"))
    tokenizer = vocab.train_text_tokenizer(TITLES + prompts.template_texts(), vocab_size=400, min_frequency=1)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    table = vocab.random_token_embeddings(tokenizer.get_vocab_size(), 32, 0)
    np.save(os.path.join(path, "token_embeddings.npy"), table)
    return path


def build(llm_dir, code_embeddings=None, **overrides):
    items = ItemTable([str(i) for i in range(len(TITLES))], TITLES, [""] * 5, [""] * 5, CATEGORIES)
    return SemConvRecommender(model_config(**overrides), SIDTable(CODES, SIZES), items, llm_dir, code_embeddings)


BATCH = {"history": jnp.array([[0, 2, 1], [0, 0, 3]]), "history_mask": jnp.array([[False, True, True],
                                                                                 [False, False, True]]),
         "target": jnp.array([4, 1])}
EIGHT_ROWS = {k: jnp.tile(v, (4,) + (1,) * (v.ndim - 1)) for k, v in BATCH.items()}  # every task gets a row


def test_beam_search_over_the_kv_cache_equals_exhaustive_scoring(llm_dir):
    model = build(llm_dir)
    params = model.init(jax.random.PRNGKey(1), BATCH)
    # Beam 5 = every SID, so the search is exact: its scores are the teacher-forced log-probs.
    sids, scores = jax.jit(lambda p, b: model.search(p, b, 5).results())(params, BATCH)
    prompt = model.builder.seq(BATCH, None)

    @jax.jit
    def sequence_log_prob(codes):  # teacher-forced log p(codes | prompt) [B], no cache
        tokens = jnp.concatenate([prompt.prompt, jnp.broadcast_to(codes, (2, 3))], 1)
        valid = jnp.concatenate([prompt.prompt_valid, jnp.ones((2, 3), bool)], 1)
        logits = model.module.apply({"params": params}, tokens, *positions_and_mask(valid))
        log_probs = jax.nn.log_softmax(logits[:, prompt.prompt.shape[1] - 1:-1], -1)
        return jnp.take_along_axis(log_probs, tokens[:, -3:, None], -1)[..., 0].sum(-1)

    exhaustive = np.stack([sequence_log_prob(jnp.asarray(model.code_vocab.token_ids(c))) for c in CODES], 1)
    leaf_item = np.asarray(model.leaf_items)[np.asarray(sids), 0]
    np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(exhaustive, leaf_item, 1), atol=2e-5)
    np.testing.assert_array_equal(leaf_item, np.argsort(-exhaustive, 1))
    ranked = np.asarray(jax.jit(lambda p, b: model.topk(p, b, 5))(params, BATCH))
    np.testing.assert_array_equal(ranked, np.argsort(-exhaustive, 1))


def test_aligned_code_rows_initialise_the_token_table(llm_dir):
    rng = np.random.default_rng(0)
    code_embeddings = rng.standard_normal((3, 3, 32)).astype(np.float32)
    model = build(llm_dir, code_embeddings)
    table = np.asarray(model.init(jax.random.PRNGKey(0), BATCH)["embed_tokens"]["embedding"].value)
    text = np.load(os.path.join(llm_dir, "token_embeddings.npy"))
    np.testing.assert_allclose(table[:len(text)], text, rtol=1e-6)
    rows = table[model.code_vocab.offset:model.code_vocab.offset + 9]
    flat = code_embeddings.reshape(9, 32)
    scale = rows / flat
    np.testing.assert_allclose(scale, scale.flat[0], rtol=1e-5)  # one scale: the text rows' RMS
    np.testing.assert_allclose(np.sqrt(np.mean(rows ** 2)), np.sqrt(np.mean(text ** 2)), rtol=1e-5)
    random_rows = build(llm_dir).init(jax.random.PRNGKey(0), BATCH)["embed_tokens"]["embedding"].value
    assert not np.allclose(np.asarray(random_rows)[model.code_vocab.offset:][:9], rows)


def test_the_task_mixture_trains(llm_dir):
    import optax

    model = build(llm_dir)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), BATCH))
    batch = EIGHT_ROWS
    assert model.task_rows(8) == {"seq": 4, "item2code": 1, "code2item": 1, "query": 1, "negative": 1}
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    grad = jax.jit(jax.value_and_grad(lambda p, r: model.loss(p, batch, r), has_aux=True))
    losses = []
    for step in range(20):
        (loss, metrics), g = grad(params, jax.random.PRNGKey(step))
        updates, opt = tx.update(g, opt)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert set(metrics) == {f"nll_{t}" for t in prompts.TASKS}
    assert losses[-1] < 0.5 * losses[0]


def test_lora_freezes_the_base_transformer_but_not_the_token_table(llm_dir):
    model = build(llm_dir, lora_rank=4)
    flat = traverse_util.flatten_dict(model.init(jax.random.PRNGKey(0), BATCH))
    trained = sorted("/".join(k) for k in flat if not is_frozen("/".join(k), model.frozen))
    assert trained == ["embed_tokens/embedding", "layers_0/self_attn/q_proj/lora_a", "layers_0/self_attn/q_proj/lora_b",
                       "layers_0/self_attn/v_proj/lora_a", "layers_0/self_attn/v_proj/lora_b"]
    assert build(llm_dir).frozen == ()


def test_tiny_pipeline_from_features_to_the_cache(tmp_path):
    config = semconv_config.get_config("tiny")
    config.train.num_epochs = 1
    stages.run(config, str(tmp_path))
    read = lambda *parts: json.loads((tmp_path.joinpath(*parts)).read_text())
    features = read("features", "summary.json")
    assert features["llm"]["vocab_size"] == 400 and features["cf"]["shape"] == [100, 16]  # DCCF's item table
    assert read("features", "cf_config.json")["source"] == "dccf" and features["cf"]["train"]["final_step"] > 0
    assert read("tokenize", "summary.json")["tokenizer"] == "aligned"
    assert (tmp_path / "tokenize" / "code_token_embeddings.npy").is_file()
    assert 0.0 <= read("eval", "metrics.json")["test"]["recall@10"] <= 1.0
    assert read("cache", "summary.json")["users"] == 150
    items, _, found = TopKCache.open(str(tmp_path / "cache" / "topk.sqlite")).lookup([0, 149])
    assert found.all() and items.shape == (2, 20) and (items >= 0).all()


def test_an_imported_checkpoint_keeps_its_weights_and_gains_code_rows(llm_dir, tmp_path):
    from gr_jax.llm.hf_import import save_hf
    from gr_jax.llm.model import LlamaConfig, LlamaModel

    text_vocab = len(np.load(os.path.join(llm_dir, "token_embeddings.npy")))
    config = LlamaConfig(vocab_size=text_vocab + 4, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, tie_word_embeddings=False)  # 4 padding rows, as Qwen pads
    tokens = jnp.zeros((1, 2), jnp.int32)
    base = nn.meta.unbox(LlamaModel(config).init(jax.random.PRNGKey(3), tokens, *positions_and_mask(tokens >= 0)))
    save_hf(str(tmp_path), config, base["params"])
    (tmp_path / "tokenizer.json").write_text(open(os.path.join(llm_dir, "tokenizer.json")).read())

    model = build(llm_dir, checkpoint=str(tmp_path), tie_word_embeddings=True, lora_rank=2)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), BATCH))
    assert model.llm_config.tie_word_embeddings is False  # the checkpoint's layout, not the config's default
    imported = traverse_util.flatten_dict(base["params"])
    for path, value in traverse_util.flatten_dict(params).items():
        if path[-1] in ("lora_a", "lora_b"):
            continue
        if path == ("embed_tokens", "embedding"):
            np.testing.assert_array_equal(value[:text_vocab + 4], imported[path])
            assert value.shape[0] >= model.code_vocab.offset + 9
        elif path == ("lm_head", "kernel"):
            np.testing.assert_array_equal(value[:, :text_vocab + 4], imported[path])
        else:
            np.testing.assert_array_equal(value, imported[path])
    assert np.isfinite(float(jax.jit(model.loss)(params, EIGHT_ROWS, jax.random.PRNGKey(0))[0]))
