"""Every family's model at its ``:scientific`` size on Scientific shapes, with a random
(collision-free) SID table and random item features of Scientific's sizes, for speed benches."""

from __future__ import annotations

import importlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import load_config, load_dataset
from configs import gat as gat_config
from configs import pctx as pctx_config
from configs import prism as prism_config
from configs import sasrec as sasrec_config
from configs import semconv as semconv_config
from configs import tiger as tiger_config
from gr_jax.data.dataset import Interactions, ItemTable
from gr_jax.data.pipeline import train_rows
from gr_jax.data.splits import assemble_batch
from gr_jax.models.crbr_recommender import CRBRRecommender
from gr_jax.models.gat import GATRecommender
from gr_jax.models.latent import LatentRecommender
from gr_jax.models.pctx import PctxRecommender
from gr_jax.models.prism import PrismRecommender
from gr_jax.models.sasrec import SASRecRecommender
from gr_jax.models.semconv import SemConvRecommender
from gr_jax.models.tiger import TigerRecommender
from gr_jax.models.two_tower import TwoTowerRecommender
from gr_jax.stages.features import Features
from gr_jax.tokenizers.sid_table import SIDTable


def random_sid_codes(num_items: int, num_levels: int, codebook_size: int, seed: int = 0) -> np.ndarray:
    """Distinct random SIDs (last level de-duplicated) for ``num_items`` items."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, (num_items, num_levels))
    codes[:, -1] = np.arange(num_items) % codebook_size
    return codes


def build(item_level_history: bool, num_items: int = 4344, num_levels: int = 4, codebook_size: int = 256,
          beam_size: int = 20, dropout_impl: str = "hash", unroll_decoding: bool = False,
          dropout: float | None = None) -> TigerRecommender:
    """TIGER of ``configs/tiger.py`` (its dropout rate unless ``dropout`` is given)."""
    model_cfg = tiger_config.get_config().model
    model_cfg.item_level_history = item_level_history
    model_cfg.dropout_impl = dropout_impl
    if dropout is not None:
        model_cfg.dropout = dropout
    model_cfg.beam_size = beam_size
    table = SIDTable(random_sid_codes(num_items, num_levels, codebook_size), (codebook_size,) * num_levels)
    return TigerRecommender(model_cfg, table, unroll_decoding=unroll_decoding)


def build_prism(item_level_history: bool, overrides: dict | None = None, num_items: int = 4344, num_levels: int = 4,
                codebook_size: int = 256, code_dim: int = 32, text_dim: int = 384, cf_dim: int = 64,
                beam_size: int = 20, unroll_decoding: bool = False) -> PrismRecommender:
    """PRISM over random SIDs, codebooks (all levels but the last) and text/CF features; ``overrides``
    update ``config.model`` (e.g. ``{"dsi_fusion": "gate"}``)."""
    model_cfg = prism_config.get_config("scientific").model
    model_cfg.update(item_level_history=item_level_history, beam_size=beam_size, **(overrides or {}))
    rng = np.random.default_rng(0)
    codes = random_sid_codes(num_items, num_levels, codebook_size)
    codebooks = [rng.normal(size=(codebook_size, code_dim)).astype(np.float32) for _ in range(num_levels - 1)]
    table = SIDTable(codes.astype(np.int32), (codebook_size,) * num_levels, codebooks=codebooks)
    features = Features(text=rng.normal(size=(num_items, text_dim)).astype(np.float32),
                        cf=rng.normal(size=(num_items, cf_dim)).astype(np.float32))
    return PrismRecommender(model_cfg, table, features.text, features.cf, unroll_decoding=unroll_decoding)


def build_gat(num_items: int = 4344, num_levels: int = 4, codebook_size: int = 256, text_dim: int = 384,
              beam_size: int = 20, unroll_decoding: bool = False) -> GATRecommender:
    """The Generative Action Transformer of ``configs/gat.py`` over random SIDs and text features."""
    model_cfg = gat_config.get_config("scientific").model
    model_cfg.beam_size = beam_size
    rng = np.random.default_rng(0)
    table = SIDTable(random_sid_codes(num_items, num_levels, codebook_size), (codebook_size,) * num_levels)
    features = Features(text=rng.normal(size=(num_items, text_dim)).astype(np.float32))
    users = Interactions.from_lists(["u"], [np.arange(4)])
    return GATRecommender(model_cfg, table, features, users, unroll_decoding=unroll_decoding,
                          frozen=tuple(gat_config.get_config().train.frozen))


def build_pctx(num_items: int = 4344, sids_per_item: float = 1.66, events_per_item: int = 2, num_levels: int = 4,
               codebook_size: int = 256, beam_size: int = 20, unroll_decoding: bool = False) -> PctxRecommender:
    """Pctx of ``configs/pctx.py:scientific`` over a random personalized table: every item keeps one SID
    and ``sids_per_item`` on average (Scientific's at the default merge threshold, BENCHMARKS.md), and
    event ``e`` belongs to item ``e % num_items`` (``random_batch(..., events_per_item=...)``)."""
    model_cfg = pctx_config.get_config("scientific").model
    model_cfg.beam_size = beam_size
    rng = np.random.default_rng(0)
    extra = rng.integers(0, num_items, round((sids_per_item - 1) * num_items))
    sid_item = np.concatenate([np.arange(num_items), extra]).astype(np.int32)
    codes = random_sid_codes(len(sid_item), num_levels, codebook_size)
    sids_of = [np.flatnonzero(sid_item == item) for item in range(num_items)]
    event_item = np.arange(num_items * events_per_item) % num_items
    event_sid = np.array([rng.choice(sids_of[item]) for item in event_item], np.int32)
    sid_counts = np.maximum(np.bincount(event_sid, minlength=len(sid_item)), 1)
    table = SIDTable(codes, (codebook_size,) * num_levels, sid_item=sid_item, event_sid=event_sid,
                     sid_counts=sid_counts)
    return PctxRecommender(model_cfg, table, unroll_decoding=unroll_decoding)


def build_semconv(llm_dir: str, num_items: int = 4344, num_levels: int = 4, codebook_size: int = 256,
                  beam_size: int = 20, unroll_decoding: bool = False) -> SemConvRecommender:
    """Semantic Convergence's from-scratch LLM of ``configs/semconv.py:scientific`` over random SIDs and
    made-up titles, its BPE vocabulary (``features.llm.vocab_size``) trained into ``llm_dir``."""
    from gr_jax.llm import prompts, vocab

    config = semconv_config.get_config("scientific")
    config.model.beam_size = beam_size
    rng = np.random.default_rng(0)
    words = np.array(["glass", "beaker", "nitrile", "gloves", "digital", "caliper", "safety", "goggles", "pipette",
                      "tips", "flask", "microscope", "slides", "funnel", "burette", "stand", "clamp", "scale"])
    titles = [" ".join(rng.choice(words, 4)) + f" {i}" for i in range(num_items)]
    categories = [("Science", str(rng.choice(words))) for _ in range(num_items)]
    tokenizer = vocab.train_text_tokenizer(titles + prompts.template_texts(), config.features.llm.vocab_size)
    os.makedirs(llm_dir, exist_ok=True)
    tokenizer.save(os.path.join(llm_dir, "tokenizer.json"))
    np.save(os.path.join(llm_dir, "token_embeddings.npy"),
            vocab.random_token_embeddings(tokenizer.get_vocab_size(), config.model.hidden_size, 0))
    items = ItemTable([str(i) for i in range(num_items)], titles, [""] * num_items, [""] * num_items, categories)
    table = SIDTable(random_sid_codes(num_items, num_levels, codebook_size), (codebook_size,) * num_levels)
    return SemConvRecommender(config.model, table, items, llm_dir, unroll_decoding=unroll_decoding)


def build_sasrec(num_items: int = 4344, history: int = 20) -> SASRecRecommender:
    """SASRec of ``configs/sasrec.py:scientific`` (full-softmax CE over the catalogue)."""
    return SASRecRecommender(sasrec_config.get_config("scientific").model, num_items, history)


def build_retriever(name: str, num_items: int = 4344, text_dim: int = 384, cf_dim: int = 64):
    """The two-tower, CRBR or latent-tokenization model of ``configs/<name>.py:scientific`` over random
    text + CF features."""
    model_cfg = importlib.import_module(f"configs.{name}").get_config("scientific").model
    rng = np.random.default_rng(0)
    features = Features(text=rng.normal(size=(num_items, text_dim)).astype(np.float32),
                        cf=rng.normal(size=(num_items, cf_dim)).astype(np.float32))
    kind = {"two_tower": TwoTowerRecommender, "crbr": CRBRRecommender, "latent": LatentRecommender}[name]
    return kind(model_cfg, features)


def random_batch(batch_size: int, history: int, num_items: int, seed: int = 0, actions: bool = False,
                 events_per_item: int = 0) -> dict:
    """A batch of random histories; ``actions``: also clicks and skips (half each) for GAT;
    ``events_per_item``: also event indices (Pctx), event ``e`` of item ``e % num_items``."""
    rng = np.random.default_rng(seed)
    batch = {"user": jnp.asarray(rng.integers(0, 10_000, batch_size), jnp.int32),
             "history": jnp.asarray(rng.integers(0, num_items, (batch_size, history)), jnp.int32),
             "history_mask": jnp.ones((batch_size, history), bool),
             "target": jnp.asarray(rng.integers(0, num_items, batch_size), jnp.int32)}
    if actions:
        batch["history_actions"] = jnp.asarray(rng.choice([1, 4], (batch_size, history)), jnp.int32)
        batch["target_action"] = jnp.asarray(rng.choice([1, 4], batch_size), jnp.int32)
    if events_per_item:
        for name, items in (("history_event", batch["history"]), ("target_event", batch["target"])):
            batch[name] = items + num_items * jnp.asarray(rng.integers(0, events_per_item, items.shape), jnp.int32)
    return batch


def data_batch(spec: str, batch_size: int, num_items: int, seed: int = 0) -> dict:
    """``batch_size`` training examples of a config's dataset (``'tiger:scientific'``), drawn at random
    and assembled as the input pipeline does (``splits.assemble_batch``, the config's history length)."""
    config = load_config(spec)
    interactions = load_dataset(config).users
    rows = train_rows(interactions)
    chosen = rows[np.random.default_rng(seed).choice(len(rows), batch_size, replace=False)]
    batch = assemble_batch(interactions, chosen, config.data.max_history)
    if batch["target"].max() >= num_items or batch["history"].max() >= num_items:
        raise ValueError(f"{spec}: its items outnumber the model's {num_items}")
    return {k: jnp.asarray(batch[k]) for k in ("user", "history", "history_mask", "target")}


def compiled_flops(jitted, *args) -> float:
    """FLOPs of one call from XLA's cost analysis of the lowered HLO (``lowered_flops``)."""
    return lowered_flops(jitted.lower(*args))


def lowered_flops(lowered) -> float:
    """FLOPs of a lowered call from XLA's cost analysis.

    The pre-optimisation module is used because it is the same program on every backend: on
    CPU its count equals ``compile().cost_analysis()``, while on GPU the compiled module hides
    matmuls inside cuBLAS custom calls that the cost analysis does not count.
    """
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:  # some backends (jax 0.11 GPU) give none: count on CPU instead
        return float("nan")
    return float(cost["flops"])


class CompiledTrainStep:
    """The trainer's jitted step for one model and batch, compiled and warmed up (two steps), to time.

    ``flops``: per step (``lowered_flops``; ``flops_upper_bound``: the step holds a ``lax.switch``, for
    which the cost analysis counts the costliest branch, so the count bounds what a step runs);
    ``compile_s``: seconds to set up, compile and warm up. Build and run it inside
    ``trainer.mesh_context(config)``.
    """

    def __init__(self, model, optimizer, config, batch: dict, mesh):
        from gr_jax.training import trainer

        tic = time.perf_counter()
        self.state, shardings = trainer.create_state(model, optimizer, config, mesh, batch, seed=0)
        self.step = trainer.jit_train_step(model, optimizer, mesh, shardings)
        self.batch = batch
        lowered = self.step.lower(self.state, batch)
        self.flops, self.flops_upper_bound = lowered_flops(lowered), "stablehlo.case" in lowered.as_text()
        self.metrics = None
        self.run(2)
        self.compile_s = time.perf_counter() - tic

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps (the state carries on from the previous call)."""
        tic = time.perf_counter()
        for _ in range(steps):
            self.state, self.metrics = self.step(self.state, self.batch)
        jax.block_until_ready(self.metrics)
        return (time.perf_counter() - tic) / steps


def time_train_steps(model, optimizer, config, batch: dict, steps: int) -> dict:
    """``CompiledTrainStep``'s seconds per step (after two warm-up steps), FLOPs per step and
    ``flops_upper_bound``, ``compile_s``, whether the loss is finite, and the final state."""
    from gr_jax.training import trainer

    with trainer.mesh_context(config) as mesh:
        compiled = CompiledTrainStep(model, optimizer, config, batch, mesh)
        seconds = compiled.run(steps)
        return {"seconds": seconds, "flops": compiled.flops, "flops_upper_bound": compiled.flops_upper_bound,
                "compile_s": compiled.compile_s, "finite": bool(compiled.metrics["finite"]),
                "state": compiled.state}


def timed(fn, *args, repeats: int) -> float:
    """Best-of-3 mean seconds per call of ``fn`` over ``repeats`` calls (after a warm-up call)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        tic = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - tic) / repeats)
    return best
