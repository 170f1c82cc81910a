"""Pipeline stages. Each reads what earlier stages left in the context (or the workdir),
writes its artifacts and a ``summary.json`` under ``WORKDIR/<stage>/``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gr_jax.data import tfds_builder
from gr_jax.data.dataset import Dataset
from gr_jax.evaluation.evaluator import evaluate, format_table
from gr_jax.models import registry
from gr_jax.training import trainer


@dataclasses.dataclass
class Context:
    config: ml_collections.ConfigDict
    workdir: str
    dataset: Dataset | None = None
    features: Any = None  # gr_jax.features.Features
    sid_table: Any = None  # gr_jax.tokenizers.sid_table.SIDTable
    model: Any = None
    params: Any = None
    fitted: bool = False  # count baselines fitted in this process


def is_primary() -> bool:
    """Only process 0 writes shared outputs on multi-host runs."""
    return jax.process_index() == 0


def write_json(path: str, payload: dict) -> None:
    if not is_primary():
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


def _dataset(ctx: Context) -> Dataset:
    if ctx.dataset is None:
        run_data(ctx)
    return ctx.dataset


def run_data(ctx: Context) -> None:
    """Builds (or reuses) the ArrayRecord dataset and loads it back through ``tfds.data_source``."""
    data = ctx.config.data
    tfds_dir = data.tfds_dir or os.path.join(ctx.workdir, "data", "tfds")
    tic = time.time()
    builder = tfds_builder.build(data, tfds_dir)
    ctx.dataset = tfds_builder.load(builder)
    summary = ctx.dataset.stats() | {"report": ctx.dataset.report, "tfds_dir": builder.data_dir,
                                     "seconds": time.time() - tic}
    write_json(os.path.join(ctx.workdir, "data", "summary.json"), summary)
    logging.info("Data: %d users, %d items, %d events (%s).", summary["num_users"], summary["num_items"],
                 summary["num_events"], builder.data_dir)


def run_features(ctx: Context) -> None:
    """MiniLM item-text embeddings and/or collaborative (SASRec/DuoRec) item embeddings."""
    from gr_jax.features import compute_features

    ctx.features, summary = compute_features(ctx.config, ctx.workdir, _dataset(ctx))
    write_json(os.path.join(ctx.workdir, "features", "summary.json"), summary)


def _features(ctx: Context):
    if ctx.features is None:
        from gr_jax.features import load_features

        ctx.features = load_features(ctx.workdir)
    return ctx.features


def run_tokenize(ctx: Context) -> None:
    """Item embeddings -> SID table + codebook health report."""
    from gr_jax.tokenizers.stage import tokenize

    ctx.sid_table, summary = tokenize(ctx.config, ctx.workdir, _dataset(ctx), _features(ctx))
    write_json(os.path.join(ctx.workdir, "tokenize", "summary.json"), summary)


def _sid_table(ctx: Context):
    if ctx.sid_table is None:
        from gr_jax.tokenizers.stage import load_sid_table

        ctx.sid_table = load_sid_table(ctx.workdir, ctx.config.tokenizer.name)
    return ctx.sid_table


def _model(ctx: Context):
    if ctx.model is None:
        name = ctx.config.model.name
        ctx.model = registry.build(ctx.config, _dataset(ctx).num_items,
                                   _sid_table(ctx) if name in registry.SID_MODELS else None,
                                   _features(ctx) if name in registry.FEATURE_MODELS else None)
    return ctx.model


def _load_pretrained_qformer(ctx: Context) -> None:
    """``model.init_qformer_from``: the Q-Former to start training from (read by the train stage
    only; eval-only runs restore their own best checkpoint)."""
    from gr_jax.models.qformer_pretrain import load_pretrained_qformer

    source = ctx.config.model.init_qformer_from
    ctx.model.pretrained_qformer = load_pretrained_qformer(source, ctx.config.model, _features(ctx),
                                                           _dataset(ctx).users)
    logging.info("Q-Former initialised from the pre-training run %s.", source)


def run_train(ctx: Context) -> None:
    """Fits count baselines or trains a neural model (best params kept by validation NDCG@10)."""
    model = _model(ctx)
    interactions = _dataset(ctx).users
    if not model.trainable:
        tic = time.time()
        model.fit(interactions)
        ctx.fitted = True
        summary = {"model": ctx.config.model.name, "fit_seconds": time.time() - tic}
    else:
        if ctx.config.model.get("init_qformer_from"):
            _load_pretrained_qformer(ctx)
        result = trainer.train(ctx.config, os.path.join(ctx.workdir, "train"), model, interactions)
        ctx.params = result.params
        summary = {"model": ctx.config.model.name} | result.summary
        if hasattr(model, "item_embeddings"):
            path = os.path.join(ctx.workdir, "train", "item_embeddings.npy")
            np.save(path, np.asarray(model.item_embeddings(ctx.params)))
            summary["item_embeddings"] = path
    write_json(os.path.join(ctx.workdir, "train", "summary.json"), summary)


def _evaluate(ctx: Context) -> dict[str, dict]:
    model, size, users = _model(ctx), ctx.config.eval.list_size, _dataset(ctx).users
    if not model.trainable:
        if not ctx.fitted:
            model.fit(users)
            ctx.fitted = True
        return evaluate(lambda batch: model.topk(batch, size), users, ctx.config, _dataset(ctx).num_items)
    if ctx.params is None:
        ctx.params = trainer.restore_best_params(os.path.join(ctx.workdir, "train"), model, users, ctx.config)
    index = ctx.config.eval.get("index", "exact")
    with trainer.mesh_context(ctx.config) as mesh:
        if index == "exact":
            topk = trainer.jit_topk(model, mesh, None, size)(ctx.params)
        elif index == "scann":
            from gr_jax.retrieval import serving

            topk = serving.scann_topk(model, ctx.params, serving.ScannConfig(**ctx.config.scann), size,
                                      os.path.join(ctx.workdir, "eval", "scann_index"))
        else:
            raise ValueError(f"eval.index={index!r}; expected 'exact' or 'scann'")
        return evaluate(topk, users, ctx.config, _dataset(ctx).num_items)


def run_eval(ctx: Context) -> None:
    """Full-catalogue top-K on valid/test; writes ``eval/metrics.json`` and prints a table."""
    tic = time.time()
    results = _evaluate(ctx)
    write_json(os.path.join(ctx.workdir, "eval", "metrics.json"), results)
    write_json(os.path.join(ctx.workdir, "eval", "summary.json"), {"seconds": time.time() - tic})
    if is_primary():
        print(format_table(results, title=f"{ctx.config.name} on {_dataset(ctx).name} "
                                          f"(list size {ctx.config.eval.list_size})"), flush=True)


STAGES: dict[str, Callable[[Context], None]] = {"data": run_data, "features": run_features,
                                                "tokenize": run_tokenize, "train": run_train, "eval": run_eval}


def parse_stages(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ValueError(f"config.stages={spec!r}: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return names


def run(config: ml_collections.ConfigDict, workdir: str) -> Context:
    """Runs the configured stages in order in ``workdir``."""
    if "://" in workdir:
        raise ValueError(f"--workdir={workdir} is a URL; gr_jax writes through the local filesystem, so use a "
                         f"local or mounted path (e.g. a gcsfuse mount of the bucket, shared by all hosts)")
    ctx = Context(config=config, workdir=workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    for name in parse_stages(config.stages):
        tic = time.time()
        logging.info("=== stage %s ===", name)
        STAGES[name](ctx)
        logging.info("=== stage %s done in %.1fs ===", name, time.time() - tic)
    return ctx
