"""The cache stage: every user's top-K, ranked from their full history (what to serve next), in a
``TopKCache`` at ``WORKDIR/cache/topk.sqlite``, plus ``cache/summary.json``.

Any model runs: fitted baselines rank on the host with ``topk(params, batch, k)``, trainable ones
through the same jitted, mesh-sharded ``topk`` as the eval stage, on fixed-size batches (padded to
``batch_size`` like the evaluator's). A serving batch is the evaluator's batch for a target just
past each user's last event: the history is the user's last ``data.max_history`` events, and
``target``/``target_event`` are 0 (there is none).

Rerunning the stage resumes a killed build and refreshes a finished one: only users whose history
digest changed (or who are new) are recomputed. A cache built by another model (fingerprint of the
model config sections, the params and the SID codes) or for another ``k`` is rebuilt from scratch.

Settings: ``config.cache`` (``configs/common.py``).
The recommender contract returns ranked items only, so the stored scores are reciprocal ranks
``1 / (rank + 1)`` (0 where the list holds no item).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np

from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import assemble_batch
from gr_jax.serving.topk_cache import TopKCache, history_digest, remove

CACHE_FILE = "topk.sqlite"
FINGERPRINT_SECTIONS = ("data", "features", "tokenizer", "model")


def settings(config) -> dict:
    """``k``, ``batch_size`` (0: ``eval.batch_size``) and ``progress_every`` of ``config.cache``."""
    section = config.cache
    return {"k": section.k, "batch_size": section.batch_size or config.eval.batch_size,
            "progress_every": section.progress_every}


class UserHistories(Mapping):
    """``user id -> full item sequence`` over ``Interactions`` without copying (``TopKCache.refresh``)."""

    def __init__(self, interactions: Interactions):
        self.interactions = interactions

    def __getitem__(self, user: int) -> np.ndarray:
        if not 0 <= user < len(self.interactions):
            raise KeyError(user)
        return self.interactions.sequence(user)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.interactions)))

    def __len__(self) -> int:
        return len(self.interactions)


def sequence_digests(interactions: Interactions) -> np.ndarray:
    """``history_digest`` of every user's full sequence, int64 ``[num_users]``."""
    items = interactions.items.astype("<i8")
    offsets = interactions.offsets
    return np.fromiter((history_digest(items[offsets[u]:offsets[u + 1]]) for u in range(len(interactions))),
                       np.int64, len(interactions))


def with_end_event(interactions: Interactions) -> Interactions:
    """``interactions`` plus one padding user with one event, so that a target position equal to a
    user's length (just past the last event) indexes a real event for every user."""
    pad = lambda a, value: None if a is None else np.concatenate([a, np.asarray([value], a.dtype)])
    return Interactions(list(interactions.user_keys) + ["<end>"],
                        np.concatenate([interactions.offsets, [interactions.offsets[-1] + 1]]),
                        pad(interactions.items, 0), pad(interactions.actions, 0), pad(interactions.ratings, 0.0),
                        pad(interactions.timestamps, 0), pad(interactions.targets, False))


def serving_batch(extended: Interactions, users: np.ndarray, max_history: int, batch_size: int) -> dict:
    """The batch ``[batch_size]`` ranking ``users`` from their full histories (``extended``:
    ``with_end_event``); rows past ``len(users)`` repeat the first user and have ``valid`` False."""
    users = np.asarray(users, np.int64)
    padded = np.concatenate([users, np.repeat(users[:1], batch_size - len(users))])
    rows = np.stack([padded, extended.lengths[padded]], axis=1)
    batch = assemble_batch(extended, rows, max_history)
    batch["target"] = np.zeros_like(batch["target"])
    batch["target_event"] = np.zeros_like(batch["target_event"])
    if "target_action" in batch:
        batch["target_action"] = np.zeros_like(batch["target_action"])
    valid = np.zeros(batch_size, bool)
    valid[:len(users)] = True
    return batch | {"valid": valid}


def reciprocal_rank_scores(items: np.ndarray) -> np.ndarray:
    """Scores ``1 / (rank + 1)`` of a ranked ``[N, k]`` list, 0 where the item is -1."""
    ranks = np.arange(items.shape[1], dtype=np.float32)
    return np.where(items >= 0, 1.0 / (ranks + 1.0), 0.0).astype(np.float32)


def recommend_from_interactions(ranking: Callable[[dict], np.ndarray], interactions: Interactions,
                                max_history: int, batch_size: int, k: int):
    """``TopKCache.refresh``'s ``recommend_fn`` for users of ``interactions``: ``ranking(batch) ->
    [batch_size, >= k]`` item ids on serving batches (the histories come from ``interactions``)."""
    extended = with_end_event(interactions)

    def recommend(users: np.ndarray, histories: list) -> tuple[np.ndarray, np.ndarray]:
        del histories  # the batch is assembled from ``interactions`` (same sequences)
        out = []
        for start in range(0, len(users), batch_size):
            chunk = users[start:start + batch_size]
            ranked = np.asarray(ranking(serving_batch(extended, chunk, max_history, batch_size)))
            out.append(ranked[:len(chunk), :k])
        items = np.concatenate(out).astype(np.int32)
        return items, reciprocal_rank_scores(items)

    return recommend


def _update(digest, value) -> None:
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    else:
        digest.update(repr(value).encode())


def model_fingerprint(config, params, sid_codes: np.ndarray | None = None) -> str:
    """A short hash of the model: its config sections, its params and the SID codes it decodes to."""
    digest = hashlib.sha256()
    current = json.loads(config.to_json_best_effort())
    digest.update(json.dumps({s: current.get(s) for s in FINGERPRINT_SECTIONS}, sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        digest.update(jax.tree_util.keystr(path).encode())
        _update(digest, np.asarray(leaf) if hasattr(leaf, "shape") else leaf)
    if sid_codes is not None:
        _update(digest, np.asarray(sid_codes))
    return f"{config.model.name}-{digest.hexdigest()[:16]}"


def open_for_build(path: str, k: int, fingerprint: str) -> tuple[TopKCache, str]:
    """The cache to build into and how: 'new', 'resume/refresh' (same model and k) or 'rebuild'."""
    if not os.path.exists(path):
        return TopKCache.create(path, k, fingerprint), "new"
    try:
        cache = TopKCache.open(path)
    except ValueError as error:  # not a cache (a broken file): start again
        logging.warning("Rebuilding %s: %s", path, error)
        remove(path)
        return TopKCache.create(path, k, fingerprint), "rebuild"
    if cache.k == k and cache.model_fingerprint == fingerprint:
        return cache, "resume/refresh"
    logging.info("Rebuilding %s: it holds top-%d lists of model %s, now top-%d of %s.", path, cache.k,
                 cache.model_fingerprint, k, fingerprint)
    cache.close()
    return TopKCache.create(path, k, fingerprint, overwrite=True), "rebuild"


def build_cache(a) -> dict:
    """The stage (``a``: ``gr_jax.stages.Artifacts``): see the module doc."""
    from gr_jax import stages
    from gr_jax.models import registry
    from gr_jax.training import trainer

    if jax.process_count() > 1:
        raise ValueError("the cache stage writes one local SQLite file, so it runs in one process: run "
                         "--config.stages=cache without --multihost on the finished workdir")
    config, model = a.config, a.model()
    options = settings(config)
    k, batch_size = options["k"], options["batch_size"]
    params = stages.load_params(a, action="Caching")
    interactions = a.dataset.users
    sid_codes = a.sid_table.codes if "sid_table" in registry.reads(config) else None
    fingerprint = model_fingerprint(config, params, sid_codes)
    os.makedirs(a.path("cache"), exist_ok=True)
    path = a.path("cache", CACHE_FILE)
    tic = time.time()
    with trainer.mesh_context(config) as mesh:
        if model.trainable:
            ranking = trainer.jit_topk(model, mesh, None, k)(params)
        else:
            ranking = lambda batch: model.topk(params, batch, k)  # noqa: E731
        recommend = recommend_from_interactions(ranking, interactions, config.data.max_history, batch_size, k)
        cache, mode = open_for_build(path, k, fingerprint)
        with cache:
            counts = cache.refresh(recommend, UserHistories(interactions), batch_size=batch_size,
                                   progress_every=options["progress_every"], digests=sequence_digests(interactions))
            num_users = cache.num_users
    seconds = time.time() - tic
    logging.info("Cache %s (%s): %d users, %d recomputed (%d new, %d changed), %d unchanged, in %.1fs.", path, mode,
                 num_users, counts["recomputed"], counts["new"], counts["changed"], counts["unchanged"], seconds)
    return {"path": path, "mode": mode, "users": num_users, "k": k, "model_fingerprint": fingerprint,
            "build_seconds": seconds, "users_per_second": counts["recomputed"] / max(seconds, 1e-9),
            "recomputed": counts["recomputed"], "new": counts["new"], "changed": counts["changed"],
            "unchanged": counts["unchanged"], "batch_size": batch_size, "scores": "reciprocal_rank"}
