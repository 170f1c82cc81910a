"""Pipeline stages that hand over typed artifacts through the workdir.

=========  ===================================================  ====================================
stage      reads                                                writes
=========  ===================================================  ====================================
data       raw files (``config.data``)                          ``Dataset``: ``WORKDIR/data``
features   ``Dataset``                                          ``Features``: ``WORKDIR/features``
tokenize   ``Dataset``, ``Features`` (not for ``index_json``)   ``SIDTable``: ``WORKDIR/tokenize``
train      ``Dataset`` + what the model reads (``registry``)     params: ``WORKDIR/train``
eval       ``Dataset``, params + what the model reads           metrics: ``WORKDIR/eval``
cache      ``Dataset``, params + what the model reads           top-K lists: ``WORKDIR/cache``
=========  ===================================================  ====================================

``Artifacts`` holds one workdir's artifacts: each is made by its stage in this process or loaded
once from the workdir. Before anything runs, the config is validated and every artifact a
configured stage reads must be made by an earlier configured stage or be on disk; otherwise the
run stops naming the stage that makes it. A run holds the workdir's lock and records itself in
``WORKDIR/runs.jsonl`` (``run_record``); the train stage keeps the config it trained with in
``WORKDIR/train/config.json``. Each stage also writes ``WORKDIR/<stage>/summary.json``. A model
that learns its items' SIDs itself (``learned_sid_table``: the latent model) gets them written by
the train stage as the tokenize stage writes its own: ``WORKDIR/train/{sid_table.*,index.json,health.*}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from gr_jax import config_schema
from gr_jax.data import tfds_builder
from gr_jax.data.dataset import Dataset
from gr_jax.evaluation.evaluator import evaluate, format_table
from gr_jax.models import registry
from gr_jax.models.recommender import ActionRanker, Recommender
from gr_jax.stages import run_record
from gr_jax.stages.features import Features
from gr_jax.stages.run_record import WorkdirBusyError  # noqa: F401 (re-exported for the CLI)
from gr_jax.tokenizers.sid_table import SIDTable
from gr_jax.training import trainer
from gr_jax.training.checkpoint import has_best_checkpoint


def is_primary() -> bool:
    """Only process 0 writes shared outputs on multi-host runs."""
    return jax.process_index() == 0


def run_on_primary(name: str, stage: Callable[[], dict]) -> dict:
    """Runs a stage that only writes shared files on process 0 while the others wait at a barrier
    (they then read its artifacts from the shared workdir); a single process just runs it."""
    if jax.process_count() == 1:
        return stage()
    from jax.experimental import multihost_utils

    summary = stage() if is_primary() else {}
    multihost_utils.sync_global_devices(f"gr_jax stage {name} written")
    return summary


def write_json(path: str, payload: dict) -> None:
    if not is_primary():
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


class MissingArtifactError(FileNotFoundError):
    """A stage's input was neither made in this run nor found in the workdir."""


class Artifacts:
    """The artifacts of one workdir, each loaded at most once."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self._dataset: Dataset | None = None
        self._features: Features | None = None
        self._sid_table: SIDTable | None = None
        self._model: Recommender | None = None
        self.params: Any = None  # trained or fitted in this process (None: restore the best checkpoint)

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def fitted_path(self) -> str:
        """Where the train stage keeps a count baseline's fitted statistics."""
        return self.path("train", "fitted.npz")

    def tfds_dir(self) -> str:
        return self.config.data.tfds_dir or self.path("data", "tfds")

    def on_disk(self, name: str) -> bool:
        """Whether artifact ``name`` (an entry of ``PRODUCERS``) exists in the workdir."""
        if name == "dataset":
            return tfds_builder.builder_for(self.config.data, self.tfds_dir()).is_prepared()
        if name == "features":
            return os.path.isdir(self.path("features"))
        if name == "sid_table":
            return SIDTable.exists(self.path("tokenize"))
        if name == "params":
            return has_best_checkpoint(self.path("train", "checkpoints")) or os.path.isfile(self.fitted_path())
        raise KeyError(name)

    def _require(self, name: str) -> None:
        if not self.on_disk(name):
            stage = PRODUCERS[name]
            raise MissingArtifactError(f"no {name} in {self.workdir}: the {stage} stage makes it; add '{stage}' to "
                                       f"config.stages (or point --workdir at a run that has it)")

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._require("dataset")
            self._dataset = tfds_builder.load(tfds_builder.builder_for(self.config.data, self.tfds_dir()))
        return self._dataset

    @property
    def features(self) -> Features:
        if self._features is None:
            from gr_jax.stages.features import load_features

            self._require("features")
            self._features = load_features(self.workdir)
        return self._features

    @property
    def sid_table(self) -> SIDTable:
        if self._sid_table is None:
            self._require("sid_table")
            self._sid_table = SIDTable.load(self.path("tokenize"))
        return self._sid_table

    def model(self, pretrained_qformer: dict | None = None) -> Recommender:
        """The configured model, built once (``pretrained_qformer``: the train stage's Q-Former init)."""
        if self._model is None:
            self._model = registry.build(self.config, self, pretrained_qformer=pretrained_qformer)
        return self._model


def run_data(a: Artifacts) -> dict:
    """Builds (or reuses) the ArrayRecord dataset and loads it back through ``tfds.data_source``."""
    builder = tfds_builder.build(a.config.data, a.tfds_dir())
    a._dataset = tfds_builder.load(builder)
    summary = a.dataset.stats() | {"report": a.dataset.report, "tfds_dir": builder.data_dir}
    logging.info("Data: %d users, %d items, %d events (%s).", summary["num_users"], summary["num_items"],
                 summary["num_events"], builder.data_dir)
    return summary


def run_features(a: Artifacts) -> dict:
    """MiniLM item-text embeddings, the LLM vocabulary and/or collaborative (SASRec/DuoRec/DCCF)
    item embeddings. On a multi-process run process 0 computes the content features while the
    others wait; the collaborative model trains on every process (over the global mesh)."""
    from gr_jax.stages.features import collaborative, content_features

    def content() -> dict:
        a._features, summary = content_features(a.config, a.workdir, a.dataset)
        return summary

    summary = run_on_primary("features", content)
    if a.config.features.cf.enabled:
        a.features.cf, a.features.contexts, summary["cf"] = collaborative(a.config, a.workdir, a.dataset)
    return summary


def run_tokenize(a: Artifacts) -> dict:
    """Item embeddings -> SID table + codebook health report."""
    from gr_jax.stages.tokenize import tokenize

    features = None if a.config.tokenizer.name == "index_json" else a.features
    a._sid_table, summary = tokenize(a.config, a.workdir, a.dataset, features)
    return summary


def load_pretrained_qformer(a: Artifacts) -> dict:
    """The Q-Former params (encoder and reconstruction decoder) of the best checkpoint of the
    finished ``qformer`` run named by ``model.init_qformer_from``, checked against this config."""
    from gr_jax.models.qformer_pretrain import SHAPE_FIELDS, QFormerPretrainRecommender

    run_dir, model_config = a.config.model.init_qformer_from, a.config.model
    path = training_config_path(run_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.init_qformer_from={run_dir!r}: {path} not found; give the WORKDIR of a "
                                "finished qformer run (python -m gr_jax.main --config=configs/qformer.py ...)")
    with open(path) as f:
        pretraining = ml_collections.ConfigDict(json.load(f))
    if pretraining.model.name != "qformer":
        raise ValueError(f"model.init_qformer_from={run_dir!r} is a {pretraining.model.name!r} run; expected a "
                         "qformer (pre-training) run")
    mismatched = {f: (pretraining.model[f], model_config[f]) for f in SHAPE_FIELDS
                  if pretraining.model[f] != model_config[f]}
    if mismatched:
        raise ValueError(f"model.init_qformer_from={run_dir!r}: the Q-Former differs from the pre-trained one in "
                         + ", ".join(f"model.{f} (pre-trained {p!r}, here {h!r})" for f, (p, h) in mismatched.items())
                         + "; set these fields to the pre-training run's values")
    model = QFormerPretrainRecommender(pretraining.model, a.features)
    params = trainer.restore_best_params(os.path.join(run_dir, "train"), model, a.dataset.users, pretraining)
    logging.info("Q-Former initialised from the pre-training run %s.", run_dir)
    return params["qformer"]


def load_init_params(a: Artifacts) -> dict:
    """The best params of the finished run named by ``model.init_from`` (e.g. GAT's stage 1 for its
    stage 2), what training starts from (``params.overlay``): checked to be a finished run of the
    same model on the same SIDs."""
    from gr_jax.training.checkpoint import Checkpoints

    run_dir, name = a.config.model.init_from, a.config.model.name
    path = training_config_path(run_dir)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(run_dir, "train", "summary.json")):
        raise FileNotFoundError(f"model.init_from={run_dir!r}: no finished train stage there ({path} and train/"
                                f"summary.json); give the WORKDIR of a finished {name} run")
    with open(path) as f:
        trained = json.load(f)["model"]["name"]
    if trained != name:
        raise ValueError(f"model.init_from={run_dir!r} is a {trained!r} run; expected a {name!r} run")
    if "sid_table" in registry.reads(a.config) and not np.array_equal(
            SIDTable.load(os.path.join(run_dir, "tokenize")).codes, a.sid_table.codes):
        raise ValueError(f"model.init_from={run_dir!r} was trained on other SIDs than {a.workdir}/tokenize; use the "
                         "same data and tokenizer settings (or copy its tokenize/ here)")
    checkpoints = Checkpoints(os.path.join(run_dir, "train", "checkpoints"), trainer.SELECT_METRIC)
    params = checkpoints.restore_best(None)  # as saved: overlay checks it against this model
    checkpoints.close()
    if params is None:
        raise FileNotFoundError(f"model.init_from={run_dir!r} has no best checkpoint; rerun its train stage")
    logging.info("Training starts from the best params of %s.", run_dir)
    return params


def training_config_path(workdir: str) -> str:
    """Where a run keeps the config it trained with (``config.json`` in runs before the run record)."""
    path = os.path.join(workdir, "train", "config.json")
    return path if os.path.isfile(path) else os.path.join(workdir, "config.json")


# Sections whose fields shape the trained model: an eval-only run that changes them is warned.
MODEL_SECTIONS = ("data", "features", "tokenizer", "model")


def config_changes(trained: dict, current: dict, sections=MODEL_SECTIONS) -> list[str]:
    """``section.field (trained X, now Y)`` for every leaf of ``sections`` that differs."""
    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    old = {k: v for s in sections for k, v in leaves(trained.get(s, {}), f"{s}.")}
    new = {k: v for s in sections for k, v in leaves(current.get(s, {}), f"{s}.")}
    return [f"{k} (trained {old.get(k)!r}, now {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def run_train(a: Artifacts) -> dict:
    """Fits a count baseline or trains a neural model (best params kept by validation NDCG@10)."""
    config, interactions = a.config, a.dataset.users
    if is_primary():
        os.makedirs(a.path("train"), exist_ok=True)
        with open(a.path("train", "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    pretrained = load_pretrained_qformer(a) if config.model.get("init_qformer_from") else None
    model = a.model(pretrained_qformer=pretrained)
    if not model.trainable:
        tic = time.time()
        a.params = model.fit(interactions)
        if is_primary():
            os.makedirs(a.path("train"), exist_ok=True)
            np.savez(a.fitted_path(), **a.params)
        return {"model": config.model.name, "fit_seconds": time.time() - tic, "fitted": a.fitted_path()}
    init = load_init_params(a) if config.model.get("init_from") else None
    result = trainer.train(config, a.path("train"), model, interactions, init)
    a.params = result.params
    summary = {"model": config.model.name} | result.summary
    vectors = model.item_embeddings(a.params)
    if vectors is not None:
        summary["item_embeddings"] = a.path("train", "item_embeddings.npy")
        if is_primary():
            np.save(summary["item_embeddings"], np.asarray(vectors))
    table = model.learned_sid_table(a.params)
    if table is not None and is_primary():  # residual codes of the item vectors
        from gr_jax.stages.tokenize import write_learned_sids

        summary["item_sids"] = write_learned_sids(table, np.asarray(vectors), a.path("train"), a.dataset.items.keys)
    return summary


def load_params(a: Artifacts, action: str = "Evaluating") -> Any:
    """The params trained or fitted in this process, else the best checkpoint / fitted statistics of
    the workdir (warning when the workdir's model was trained with another config)."""
    config, model = a.config, a.model()
    if a.params is None and os.path.isfile(training_config_path(a.workdir)):
        with open(training_config_path(a.workdir)) as f:
            changes = config_changes(json.load(f), json.loads(config.to_json_best_effort()))
        if changes:
            logging.warning("%s a model trained with another config: %s", action, "; ".join(changes))
    if a.params is None and model.trainable:
        a.params = trainer.restore_best_params(a.path("train"), model, a.dataset.users, config)
    elif a.params is None:
        with np.load(a.fitted_path()) as fitted:
            a.params = dict(fitted)
    return a.params


def run_eval(a: Artifacts) -> dict:
    """Full-catalogue top-K on valid/test; writes ``eval/metrics.json`` and prints a table."""
    config, model, size = a.config, a.model(), a.config.eval.list_size
    load_params(a)
    with trainer.mesh_context(config) as mesh:
        if not model.trainable:
            ranking = lambda batch: model.topk(a.params, batch, size)  # noqa: E731
        elif config.eval.get("index", "exact") == "scann":
            from gr_jax.retrieval import serving
            from gr_jax.retrieval.scann_config import ScannConfig

            ranking = serving.scann_topk(model, a.params, ScannConfig(**config.scann), size,
                                         a.path("eval", "scann_index"))
        else:
            ranking = trainer.jit_topk(model, mesh, None, size)(a.params)
        results = evaluate(ranking, a.dataset.users, config, a.dataset.num_items)
        if is_primary():
            print(format_table(results, title=f"{config.name} on {a.dataset.name} (list size {size})"), flush=True)
        if isinstance(model, ActionRanker) and a.dataset.users.actions is not None:
            results["ranking"] = _ranking_metrics(a, model)
            if is_primary():
                print("ranking of held-out exposures: " + ", ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results["ranking"].items()),
                      flush=True)
    write_json(a.path("eval", "metrics.json"), results)
    return {}


def _ranking_metrics(a: Artifacts, model: ActionRanker) -> dict:
    """AUC and calibration of the model's action probabilities on the held-out exposures; on a
    synthetic exposure log also against the true click probabilities."""
    from gr_jax.data import sources, synthetic
    from gr_jax.evaluation.ranking import evaluate_ranking

    data = a.config.data
    truth = None
    if data.format == "synthetic" and data.synthetic.exposure_log and not data.positives_only:
        generated = synthetic.generate(sources.synthetic_config(data))[1]
        truth = generated.per_event(generated.click_prob, a.dataset.users.user_keys)
    score = jax.jit(model.positive_probability)
    probabilities = lambda batch: score(a.params, batch)  # noqa: E731
    return evaluate_ranking(probabilities, a.dataset.users, data.max_history, a.config.eval.batch_size, truth)


def run_cache(a: Artifacts) -> dict:
    """Every user's top-K from their full history into ``cache/topk.sqlite`` (resumes, refreshes)."""
    from gr_jax.stages.cache import build_cache

    return build_cache(a)


@dataclasses.dataclass(frozen=True)
class Stage:
    run: Callable[[Artifacts], dict]
    reads: Callable[[ml_collections.ConfigDict], tuple[str, ...]]
    writes: str


def _model_reads(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ("dataset",) + registry.reads(config)


STAGES: dict[str, Stage] = {
    "data": Stage(run_data, lambda c: (), "dataset"),
    "features": Stage(run_features, lambda c: ("dataset",), "features"),
    "tokenize": Stage(run_tokenize, lambda c: ("dataset",) if c.tokenizer.name == "index_json"
                      else ("dataset", "features"), "sid_table"),
    "train": Stage(run_train, _model_reads, "params"),
    "eval": Stage(run_eval, lambda c: _model_reads(c) + ("params",), "metrics"),
    "cache": Stage(run_cache, lambda c: _model_reads(c) + ("params",), "topk_cache"),
}
PRODUCERS = {stage.writes: name for name, stage in STAGES.items()}


# Stages whose work is host-local and whose output is shared files: on a multi-process run, process
# 0 runs them and the others read what it wrote (train and eval run on every process).
PRIMARY_STAGES = ("data", "tokenize")  # features runs its own parts on process 0 (run_features)

# The config section a stage reads (a system without it does not run that stage).
STAGE_SECTIONS = {"data": "data", "features": "features", "tokenize": "tokenizer", "train": "model", "eval": "model",
                  "cache": "model"}


def parse_stages(spec: str, config: Any = None) -> list[str]:
    """The stage names of ``config.stages``; with ``config``, only stages that config has sections for."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ValueError(f"config.stages={spec!r}: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    unused = [s for s in names if config is not None and STAGE_SECTIONS[s] not in config]
    if unused:
        raise ValueError(f"config.stages={spec!r}: {config.name} has no {STAGE_SECTIONS[unused[0]]!r} section, so "
                         f"no {unused[0]} stage; its stages: "
                         f"{','.join(s for s in STAGES if STAGE_SECTIONS[s] in config)}")
    return names


def check_inputs(names: list[str], artifacts: Artifacts) -> None:
    """Raises ``MissingArtifactError`` before anything runs when a stage's input will be missing."""
    made: set[str] = set()
    for name in names:
        for needed in STAGES[name].reads(artifacts.config):
            if needed not in made and not artifacts.on_disk(needed):
                raise MissingArtifactError(
                    f"stage '{name}' reads the {needed}, which neither an earlier stage of config.stages="
                    f"{artifacts.config.stages!r} makes nor {artifacts.workdir} holds; add "
                    f"'{PRODUCERS[needed]}' to config.stages")
        made.add(STAGES[name].writes)


def run(config: ml_collections.ConfigDict, workdir: str) -> Artifacts:
    """Runs the configured stages in order in ``workdir``."""
    if "://" in workdir:
        raise ValueError(f"--workdir={workdir} is a URL; gr_jax writes through the local filesystem, so use a "
                         f"local or mounted path (e.g. a gcsfuse mount of the bucket, shared by all hosts)")
    config_schema.validate(config)
    names = parse_stages(config.stages, config)
    artifacts = Artifacts(config, workdir)
    check_inputs(names, artifacts)
    os.makedirs(workdir, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if is_primary():  # the other processes of a multi-host run share the workdir
            stack.enter_context(run_record.workdir_lock(workdir))
            stack.enter_context(run_record.record_invocation(workdir, config, jax.process_count()))
        for name in names:
            tic = time.time()
            logging.info("=== stage %s ===", name)
            stage = functools.partial(STAGES[name].run, artifacts)
            summary = run_on_primary(name, stage) if name in PRIMARY_STAGES else stage()
            write_json(artifacts.path(name, "summary.json"), summary | {"seconds": time.time() - tic})
            logging.info("=== stage %s done in %.1fs ===", name, time.time() - tic)
    return artifacts
