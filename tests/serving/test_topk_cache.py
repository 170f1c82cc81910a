"""The per-user top-K cache: round trip, incremental refresh, resume after a killed build, errors,
and the cache stage on the tiny co-occurrence run (its lookups are the model's top-K)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from gr_jax.serving import TopKCache, TopKCacheError, TopKStore, history_digest, history_digests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = 5


def lists(user_ids, salt=0):
    """A deterministic top-K per user: items and descending scores."""
    users = np.asarray(user_ids, np.int64)[:, None]
    items = (users * 7 + salt + np.arange(K)) % 1000
    scores = (1.0 + users + salt) / (1.0 + np.arange(K))
    return items.astype(np.int32), scores.astype(np.float32)


class Recorder:
    """A ``recommend_fn`` that records the users it was asked for."""

    def __init__(self, salt=0):
        self.salt, self.asked = salt, []

    def __call__(self, users, histories):
        assert len(users) == len(histories)
        self.asked.extend(users.tolist())
        return lists(users, self.salt)


def test_round_trip_single_and_batched_lookups_flag_missing_users(tmp_path):
    path = str(tmp_path / "topk.sqlite")
    cache = TopKCache.create(path, k=K, model_fingerprint="m1")
    users = np.array([3, 10, 2**40, 0])
    items, scores = lists(users)
    assert cache.write(users, items, scores, history_digests([[u] for u in users]), batch_size=3) == 4
    cache.close()

    cache = TopKCache.open(path, k=K, model_fingerprint="m1")
    got_items, got_scores, found = cache.lookup(10)  # one id
    np.testing.assert_array_equal(got_items, items[1:2])
    np.testing.assert_array_equal(got_scores, scores[1:2])
    assert found.tolist() == [True]
    got_items, got_scores, found = cache.lookup([0, 99, 2**40, 3, 3])  # batched, a missing user, a repeat
    assert found.tolist() == [True, False, True, True, True]
    np.testing.assert_array_equal(got_items[[0, 2, 3, 4]], items[[3, 2, 0, 0]])
    np.testing.assert_array_equal(got_scores[[0, 2, 3, 4]], scores[[3, 2, 0, 0]])
    assert (got_items[1] == -1).all() and np.isnan(got_scores[1]).all()
    meta = cache.metadata()
    assert meta["k"] == K and meta["model_fingerprint"] == "m1" and meta["num_users"] == 4 == len(cache)
    assert meta["created_at"] and meta["updated_at"]
    # Rewriting a user replaces its list and does not count it twice; delete removes.
    new_items, new_scores = lists([3], salt=1)
    assert cache.write([3, 5], np.r_[new_items, items[:1]], np.r_[new_scores, scores[:1]], [1, 2]) == 1
    assert len(cache) == 5
    np.testing.assert_array_equal(cache.lookup([3])[0], new_items)
    assert cache.delete([5, 77]) == 1 and len(cache) == 4 and not cache.lookup([5])[2][0]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert isinstance(cache.store, TopKStore)


class DictStore:
    """A ``TopKStore`` in a dict: the interface is all ``TopKCache`` needs."""

    def __init__(self, meta):
        self.rows, self.meta = {}, dict(meta)

    def put_many(self, user_ids, values, digests):
        new = sum(int(u) not in self.rows for u in user_ids)
        self.rows.update({int(u): (v, int(d)) for u, v, d in zip(user_ids, values, digests)})
        self.meta["num_users"] = str(len(self.rows))
        return new

    def get_many(self, user_ids):
        return {int(u): self.rows[int(u)][0] for u in user_ids if int(u) in self.rows}

    def get_digests(self, user_ids):
        return {int(u): self.rows[int(u)][1] for u in user_ids if int(u) in self.rows}

    def delete_many(self, user_ids):
        removed = sum(self.rows.pop(int(u), None) is not None for u in set(user_ids.tolist()))
        self.meta["num_users"] = str(len(self.rows))
        return removed

    def get_metadata(self):
        return dict(self.meta)

    def set_metadata(self, values):
        self.meta.update(values)

    def close(self):
        pass


def test_another_store_behind_the_interface_gives_the_same_cache():
    store = DictStore({"k": str(K), "model_fingerprint": "m", "num_users": "0"})
    assert isinstance(store, TopKStore)
    cache = TopKCache(store)
    histories = {u: list(range(u)) for u in range(1, 6)}
    assert cache.refresh(Recorder(), histories, batch_size=2)["new"] == 5
    items, scores, found = cache.lookup([4, 9])
    np.testing.assert_array_equal(items[0], lists([4])[0][0])
    assert found.tolist() == [True, False] and len(cache) == 5


def test_history_digest_is_stable_and_order_sensitive():
    assert history_digest([1, 2, 3]) == history_digest(np.array([1, 2, 3], np.int32)) == history_digest(iter([1, 2, 3]))
    assert history_digest([1, 2, 3]) != history_digest([3, 2, 1]) != history_digest([1, 2])
    assert history_digest([]) != history_digest([0])
    assert history_digest([5, 6]) == -3286140643714665219  # the same in every process and version


def test_refresh_recomputes_exactly_the_users_whose_history_changed(tmp_path):
    cache = TopKCache.create(str(tmp_path / "c.sqlite"), k=K, model_fingerprint="m")
    histories = {u: list(range(u % 7 + 1)) for u in range(100)}
    built = cache.refresh(Recorder(), histories, batch_size=16, progress_every=50)
    assert (built["new"], built["recomputed"], built["unchanged"]) == (100, 100, 0)

    changed = [3, 41, 42, 99]
    for u in changed:
        histories[u] = histories[u] + [500]  # one new event
    histories[100] = [1, 2]  # a new user
    assert cache.stale_users(list(histories), history_digests(histories.values())).tolist() == changed + [100]
    recorder = Recorder(salt=1)
    counts = cache.refresh(recorder, histories, batch_size=3)
    assert sorted(recorder.asked) == changed + [100]
    assert (counts["checked"], counts["changed"], counts["new"], counts["unchanged"]) == (101, 4, 1, 96)
    items, _, found = cache.lookup(np.arange(101))
    assert found.all() and len(cache) == 101
    refreshed = np.isin(np.arange(101), changed + [100])
    np.testing.assert_array_equal(items[refreshed], lists(np.flatnonzero(refreshed), salt=1)[0])
    np.testing.assert_array_equal(items[~refreshed], lists(np.flatnonzero(~refreshed))[0])
    assert cache.refresh(Recorder(), histories)["recomputed"] == 0


def test_a_failed_batch_rolls_back_and_the_build_resumes(tmp_path):
    cache = TopKCache.create(str(tmp_path / "c.sqlite"), k=K, model_fingerprint="m")
    histories = {u: [u] for u in range(50)}

    def crashes_on_third_batch(users, histories_):
        if users[0] >= 20:
            raise RuntimeError("model server went away")
        return lists(users)

    with pytest.raises(RuntimeError):
        cache.refresh(crashes_on_third_batch, histories, batch_size=10)
    assert len(cache) == 20
    recorder = Recorder()
    assert cache.refresh(recorder, histories, batch_size=10)["recomputed"] == 30
    assert sorted(recorder.asked) == list(range(20, 50))


KILLED_BUILD = """
import sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from gr_jax.serving.topk_cache import TopKCache

def recommend(users, histories):
    time.sleep(0.1)
    items = (users[:, None] * 7 + np.arange({k})) % 1000
    return items, (1.0 + users[:, None]) / (1.0 + np.arange({k}))

cache = TopKCache.create({path!r}, k={k}, model_fingerprint="m")
cache.refresh(recommend, {{u: [u, u + 1] for u in range(2000)}}, batch_size=100)
"""


def test_a_killed_build_loses_nothing_and_resumes_where_it_stopped(tmp_path):
    path = str(tmp_path / "c.sqlite")
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILD.format(repo=REPO, path=path, k=K)])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # a second process reads while the build writes (WAL)
            if os.path.exists(path):
                try:
                    with TopKCache.open(path) as reader:
                        if len(reader) >= 300:
                            break
                except (TopKCacheError, sqlite3.OperationalError):
                    pass  # created but metadata not yet committed
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    cache = TopKCache.open(path, k=K, model_fingerprint="m")
    written = len(cache)
    stored = sqlite3.connect(path).execute("SELECT count(*) FROM topk").fetchone()[0]
    assert stored == written and 300 <= written < 2000 and written % 100 == 0  # whole batches only
    recorder = Recorder()
    counts = cache.refresh(recorder, {u: [u, u + 1] for u in range(2000)}, batch_size=500)
    assert counts["recomputed"] == len(recorder.asked) == 2000 - written and counts["unchanged"] == written
    items, scores, found = cache.lookup(np.arange(2000))
    assert found.all()
    np.testing.assert_array_equal(items, lists(np.arange(2000))[0])
    np.testing.assert_allclose(scores, lists(np.arange(2000))[1])


def test_errors_name_the_path_or_field_and_the_fix(tmp_path):
    path = str(tmp_path / "c.sqlite")
    with pytest.raises(FileNotFoundError, match=r"no top-K cache at .*c.sqlite: build it with the cache stage"):
        TopKCache.open(path)
    cache = TopKCache.create(path, k=K, model_fingerprint="m")
    with pytest.raises(FileExistsError, match="already exists: open it with TopKCache.open"):
        TopKCache.create(path, k=K, model_fingerprint="m")
    with pytest.raises(TopKCacheError, match=rf"holds top-{K} lists, not the requested k=10: open it with k={K}"):
        TopKCache.open(path, k=10)
    with pytest.raises(TopKCacheError, match="built by model m, not other: rebuild it"):
        TopKCache.open(path, model_fingerprint="other")
    items, scores = lists([1, 2])
    with pytest.raises(TopKCacheError, match=r"items has shape \(2, 4\); expected \(2, 5\)"):
        cache.write([1, 2], items[:, :4], scores, [0, 0])
    with pytest.raises(TopKCacheError, match=r"scores has shape \(1, 5\); expected \(2, 5\)"):
        cache.write([1, 2], items, scores[:1], [0, 0])
    with pytest.raises(TopKCacheError, match=r"history_digests has shape \(3,\)"):
        cache.write([1, 2], items, scores, [0, 0, 0])
    with pytest.raises(TopKCacheError, match="user ids must be in 0..2"):
        cache.lookup([-1])
    with pytest.raises(TopKCacheError, match="k=0; give a positive integer"):
        TopKCache.create(str(tmp_path / "d.sqlite"), k=0, model_fingerprint="m")
    other = str(tmp_path / "other.sqlite")
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(TopKCacheError, match="is not a top-K cache"):
        TopKCache.open(other)
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    with pytest.raises(TopKCacheError, match="notes.txt is not a top-K cache"):
        TopKCache.open(str(tmp_path / "notes.txt"))
    assert len(cache) == 0  # nothing was written by the failed calls


def test_serving_batches_hold_each_users_full_history():
    from gr_jax.data.dataset import Interactions
    from gr_jax.stages.cache import serving_batch, with_end_event

    interactions = Interactions.from_lists(["a", "b", "c"], [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12]])
    batch = serving_batch(with_end_event(interactions), np.array([2, 0]), max_history=4, batch_size=3)
    np.testing.assert_array_equal(batch["history"], [[9, 10, 11, 12], [0, 1, 2, 3], [9, 10, 11, 12]])
    assert batch["valid"].tolist() == [True, True, False] and (batch["target"] == 0).all()


@pytest.mark.parametrize("system", ["cooccurrence"])  # a neural model's cache: test_semconv's :tiny pipeline
def test_cache_stage_stores_the_models_top_k_and_reruns_incrementally(tmp_path, system):
    import importlib

    from gr_jax import stages

    config = importlib.import_module(f"configs.{system}").get_config("tiny")
    config.stages = "data,train,cache"
    artifacts = stages.run(config, str(tmp_path))
    summary = json.load(open(tmp_path / "cache" / "summary.json"))
    assert summary["users"] == summary["recomputed"] == 150 and summary["k"] == 20 and summary["mode"] == "new"
    assert summary["users_per_second"] > 0 and summary["build_seconds"] > 0

    # Expected: the model's top-20 for each user's whole sequence as history (last max_history events).
    interactions, model, params = artifacts.dataset.users, artifacts.model(), artifacts.params
    size = config.data.max_history
    history = np.zeros((150, size), np.int32)
    for u in range(150):
        sequence = interactions.sequence(u)[-size:]
        history[u, size - len(sequence):] = sequence
    mask = np.arange(size)[None] >= size - np.minimum(interactions.lengths, size)[:, None]
    batch = {"history": history, "history_mask": mask, "target": np.zeros(150, np.int32)}
    expected = model.topk(params, batch, 20)
    with TopKCache.open(str(tmp_path / "cache" / "topk.sqlite"), k=20) as cache:
        items, _, found = cache.lookup(np.arange(150))
        assert found.all() and cache.lookup([150])[2].tolist() == [False]
        single = np.stack([cache.lookup(u)[0][0] for u in (0, 77, 149)])
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_array_equal(single, expected[[0, 77, 149]])

    config.stages = "cache"  # rerun: nothing changed, nothing recomputed
    stages.run(config, str(tmp_path))
    summary = json.load(open(tmp_path / "cache" / "summary.json"))
    assert (summary["mode"], summary["recomputed"], summary["unchanged"]) == ("resume/refresh", 0, 150)

    config.cache.k = 10  # another k: rebuilt
    stages.run(config, str(tmp_path))
    assert json.load(open(tmp_path / "cache" / "summary.json"))["mode"] == "rebuild"
    with TopKCache.open(str(tmp_path / "cache" / "topk.sqlite"), k=10) as cache:
        np.testing.assert_array_equal(cache.lookup(np.arange(150))[0], expected[:, :10])
