"""The features stage: item content embeddings (MiniLM over item text) and collaborative
embeddings (the item table of a SASRec/DuoRec trained on the training split).

Artifacts under ``WORKDIR/features/``: ``text_embeddings.npy`` ``[num_items, 384]``,
``cf_embeddings.npy`` ``[num_items, D]`` (plus the CF model's own run in ``cf/``), and
``summary.json``. The text cache is keyed by content, so reruns and other configs reuse it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import ml_collections
import numpy as np

from gr_jax.data.dataset import Dataset

TEXT_FILE, CF_FILE = "text_embeddings.npy", "cf_embeddings.npy"


@dataclasses.dataclass
class Features:
    text: np.ndarray | None = None
    cf: np.ndarray | None = None

    def get(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the '{name}' item embeddings were not computed; enable config.features.{name}")
        return value


def _text_cache_dir(text: ml_collections.ConfigDict) -> str:
    return text.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "gr_jax", "text")


def cf_run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the collaborative model's own training run (same data/mesh/eval)."""
    return ml_collections.ConfigDict({
        "name": f"{config.name}-cf", "seed": config.seed, "stages": "train", "data": config.data,
        "mesh": config.mesh, "sharding": config.sharding, "eval": config.eval,
        "model": config.features.cf.model, "train": config.features.cf.train})


def compute_features(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset) -> tuple[Features, dict]:
    """Computes (or reuses from ``workdir``) the enabled embeddings; returns them and a summary."""
    from gr_jax.models import registry
    from gr_jax.text.item_text import embed_items
    from gr_jax.text.minilm import TextEncoder
    from gr_jax.training import trainer

    out_dir = os.path.join(workdir, "features")
    os.makedirs(out_dir, exist_ok=True)
    features, summary = Features(), {}
    text_cfg = config.features.text
    if text_cfg.enabled:
        tic = time.time()
        encoder = TextEncoder.from_pretrained(max_length=text_cfg.max_length, batch_size=text_cfg.batch_size)
        features.text = embed_items(dataset.items, encoder, _text_cache_dir(text_cfg), text_cfg.template,
                                    text_cfg.max_length)
        np.save(os.path.join(out_dir, TEXT_FILE), features.text)
        summary["text"] = {"shape": list(features.text.shape), "seconds": time.time() - tic}
    if config.features.cf.enabled:
        path = os.path.join(out_dir, CF_FILE)
        key_path = os.path.join(out_dir, "cf_config.json")
        key = json.dumps({"model": config.features.cf.model.to_dict(), "train": config.features.cf.train.to_dict(),
                          "seed": config.seed}, sort_keys=True, default=str)
        if os.path.exists(path) and os.path.exists(key_path) and open(key_path).read() == key:
            logging.info("Reusing collaborative embeddings %s (same features.cf config)", path)
            features.cf = np.load(path)
        else:
            tic = time.time()
            cf_config = cf_run_config(config)
            model = registry.build(cf_config, dataset.num_items)
            result = trainer.train(cf_config, os.path.join(out_dir, "cf"), model, dataset.users)
            features.cf = np.asarray(model.item_embeddings(result.params), np.float32)
            np.save(path, features.cf)
            with open(key_path, "w") as f:
                f.write(key)
            summary["cf_train"] = result.summary | {"seconds": time.time() - tic}
        summary["cf"] = {"shape": list(features.cf.shape)}
    return features, summary


def load_features(workdir: str) -> Features:
    """Embeddings a previous features stage left in ``workdir``."""
    load = lambda name: np.load(p) if os.path.exists(p := os.path.join(workdir, "features", name)) else None
    return Features(text=load(TEXT_FILE), cf=load(CF_FILE))
