"""Pctx's personalized tokenizer (Zhong et al., 2025): an item gets one SID per user *context*.

Input: a context vector for every event (the DuoRec state at the event's position over the
window of events ending with it; ``gr_jax.stages.features.event_contexts``), the item of every event,
which events are training events, and each item's text embedding. Steps (SPEC §4):

1. **Allocation** (``centroid_counts``): items with training events fall into ``T`` groups by
   quantiles of the *distinct* interaction counts, with group shares from a normalised gamma
   pdf evaluated at 1..T; group ``g`` gets ``start + g·step`` centroids, or 1 when the item has
   fewer interactions than that.
2. **Clustering** (``cluster_items``): per-item k-means++ over its training contexts; empty
   clusters are dropped. Items without training events get one centroid: the mean of all
   training contexts (so their SID comes from their text).
3. **Fusion**: PCA-whitened centroid (``context_pca_dim``) × α next to the PCA-whitened text
   embedding of its item (``text_pca_dim``) × (1 − α).
4. **Quantisation**: residual k-means ``num_levels × codebook_size`` over all fused centroids.
5. **Merging**: an item's centroids with the same codes are one SID (they would differ only in
   the collision digit); a collision digit then numbers the items sharing codes (item order);
   then, repeatedly, every SID used by fewer than ``merge_threshold`` of its item's training
   events merges (least used first) into the nearest remaining SID of that item, measured
   between raw context centroids. Every event then maps to its centroid's surviving SID;
   non-training events (valid/test positions) take their item's nearest centroid (merged ones
   included) and follow the merge pointers.

Facts (allocation rule, defaults, merge order) come from the authors' code (YoungZ365/Pctx,
read only). Deviations: the quantiser is our
Euclidean residual k-means (theirs is faiss' inner-product residual quantiser); the merge
visits the SIDs below the threshold from least to most used (theirs in SID order) and skips one
that absorbed enough events earlier in the pass (theirs merges it anyway); items without training events take the mean
training context instead of the mean item embedding.
"""

from __future__ import annotations

import numpy as np

from gr_jax.tokenizers import collisions
from gr_jax.tokenizers.configs import PctxConfig
from gr_jax.tokenizers.kmeans import kmeans_groups
from gr_jax.tokenizers.sid_table import SIDTable


def group_shares(num_groups: int, gamma_shape: float) -> np.ndarray:
    """Share of the distinct interaction counts in each group: the gamma pdf at 1..T, normalised and
    rounded to two decimals, the rounding residue split between the two largest shares (as the authors)."""
    x = np.arange(1, num_groups + 1, dtype=np.float64)
    pdf = x ** (gamma_shape - 1.0) * np.exp(-x)  # the 1/Γ(k) factor cancels
    shares = np.round(pdf / pdf.sum(), 2)
    largest = np.argsort(-shares, kind="stable")[:2]
    shares[largest] += (1.0 - shares.sum()) / len(largest)
    return shares


def centroid_counts(interaction_counts: np.ndarray, config: PctxConfig) -> np.ndarray:
    """Centroids ``[num_items]`` each item gets (1 for items without training events)."""
    counts = np.asarray(interaction_counts, np.int64)
    active = counts > 0
    distinct = np.unique(counts[active])
    if not config.personalized or not len(distinct):
        return np.ones(len(counts), np.int64)
    shares = group_shares(config.num_groups, config.gamma_shape)
    ends = np.cumsum(np.floor(shares[:-1] * len(distinct)).astype(np.int64))
    bounds = np.append(distinct[np.maximum(ends, 1) - 1], distinct[-1])  # largest count of each group
    group = np.minimum(np.searchsorted(bounds, counts, side="left"), config.num_groups - 1)
    per_group = config.first_centroids + config.centroid_step * np.arange(config.num_groups)
    k = per_group[group]
    return np.where(active & (counts >= k), k, 1)


def cluster_items(groups: list[np.ndarray], ks: list[int], num_iters: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-item k-means (``kmeans.kmeans_groups``) of each item's contexts ``groups[i] [n_i, D]`` into
    ``ks[i]`` clusters: (centroids, labels) with empty clusters dropped, so there may be fewer than
    ``ks[i]`` (e.g. identical contexts). ``k = 1`` or a single context: their mean."""
    many = [i for i, (x, k) in enumerate(zip(groups, ks)) if k > 1 and len(x) > 1]
    fitted = dict(zip(many, kmeans_groups([groups[i] for i in many], [ks[i] for i in many], num_iters=num_iters,
                                          seed=seed)))
    out = []
    for i, x in enumerate(groups):
        if i not in fitted:
            out.append((np.asarray(x, np.float64).mean(0, keepdims=True), np.zeros(len(x), np.int64)))
            continue
        centroids, labels = fitted[i]
        used = np.unique(labels)
        out.append((np.asarray(centroids[used], np.float64), np.searchsorted(used, labels)))
    return out


def pca_whiten(x: np.ndarray, dim: int) -> np.ndarray:
    """Rows of ``x`` projected on their top ``dim`` principal components, each scaled to unit variance."""
    x = np.asarray(x, np.float64)
    centered = x - x.mean(0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    dim = min(dim, len(s))
    scale = np.maximum(s[:dim] / np.sqrt(max(len(x) - 1, 1)), 1e-8)
    return (centered @ vt[:dim].T) / scale


def merge_rare(counts: np.ndarray, centroids: np.ndarray, threshold: float) -> np.ndarray:
    """One item's merge pointers ``[C]`` (``p[c] = c`` for survivors) under the frequency rule.

    ``counts [C]``: training events per SID (0 for SIDs already merged away: they are left
    alone); ``centroids [C, D]``: raw context centroids. A SID whose share of the item's events
    is below ``threshold`` merges into the nearest SID still standing, least used first, until
    every survivor reaches the threshold (or one survivor is left).
    """
    counts = np.asarray(counts, np.float64).copy()
    pointer = np.arange(len(counts))
    alive = counts > 0
    while alive.sum() > 1:
        total = counts[alive].sum()
        share = counts / total
        rare = [c for c in np.argsort(share, kind="stable") if alive[c] and share[c] < threshold]
        if not rare:
            break
        for c in rare:
            if counts[c] / total >= threshold:  # grew past the threshold by absorbing others in this pass
                continue
            others = np.flatnonzero(alive & (np.arange(len(counts)) != c))
            if not len(others):
                break
            target = others[np.argmin(np.sum((centroids[others] - centroids[c]) ** 2, 1))]
            pointer[c], alive[c] = target, False
            counts[target] += counts[c]
            counts[c] = 0
    return pointer


def _count_histogram(values: np.ndarray) -> dict[str, int]:
    keys, counts = np.unique(values, return_counts=True)
    return {str(int(k)): int(c) for k, c in zip(keys, counts)}


def _resolve(pointer: np.ndarray) -> np.ndarray:
    """Follows merge pointers to their survivors."""
    resolved = pointer.copy()
    while True:
        nxt = resolved[resolved]
        if np.array_equal(nxt, resolved):
            return resolved
        resolved = nxt


def fit_pctx(contexts: np.ndarray, event_items: np.ndarray, train_events: np.ndarray, text: np.ndarray,
             config: PctxConfig) -> tuple[SIDTable, dict]:
    """Runs steps 1-5 (module docstring); returns the artifact and a summary of SIDs per item.

    ``contexts [E, D]`` float, ``event_items [E]`` int, ``train_events [E]`` bool, ``text [N, F]``.
    """
    from gr_jax.tokenizers.rq_kmeans import RQKMeansConfig, fit_rq_kmeans

    contexts = np.asarray(contexts, np.float64)
    event_items = np.asarray(event_items, np.int64)
    train_events = np.asarray(train_events, bool)
    num_items = len(text)
    if not (len(contexts) == len(event_items) == len(train_events)):
        raise ValueError(f"{len(contexts)} contexts, {len(event_items)} event items, {len(train_events)} train flags")
    if not train_events.any():
        raise ValueError("no training events to cluster")
    train_ids = np.flatnonzero(train_events)
    counts = np.bincount(event_items[train_ids], minlength=num_items)
    k_per_item = centroid_counts(counts, config)
    by_item = np.split(train_ids[np.argsort(event_items[train_ids], kind="stable")], np.cumsum(counts)[:-1])
    fallback = contexts[train_ids].mean(0)

    # 1-2: per-item centroids, in item order; each training event's centroid.
    active = [item for item in range(num_items) if len(by_item[item])]
    fitted = cluster_items([contexts[by_item[i]] for i in active], [int(k_per_item[i]) for i in active],
                           config.kmeans_iters, config.seed)
    clusters = dict(zip(active, fitted))
    centroids, centroid_item, event_centroid = [], [], np.full(len(contexts), -1, np.int64)
    for item in range(num_items):
        if item in clusters:
            c, labels = clusters[item]
            event_centroid[by_item[item]] = len(centroid_item) + labels
        else:
            c = fallback[None]
        centroids.append(c)
        centroid_item.extend([item] * len(c))
    centroids, centroid_item = np.concatenate(centroids), np.asarray(centroid_item, np.int64)
    num_centroids = len(centroids)
    if num_centroids < config.codebook_size:
        raise ValueError(f"{num_centroids} centroids cannot fill a codebook of {config.codebook_size} codes; "
                         f"lower tokenizer.pctx.codebook_size")

    # 3-4: fusion and quantisation.
    text_part = pca_whiten(text, config.text_pca_dim)[centroid_item]
    fused = np.concatenate([config.alpha * pca_whiten(centroids, config.context_pca_dim),
                            (1.0 - config.alpha) * text_part], 1).astype(np.float32)
    rq = fit_rq_kmeans(fused, RQKMeansConfig(num_levels=config.num_levels, codebook_size=config.codebook_size,
                                             num_iters=config.rq_iters, normalize_input=False, seed=config.seed))

    # 5a: an item's centroids with the same codes are one SID (the first); the collision digit then
    # numbers the distinct items sharing codes.
    _, first_of_group, prefix_group = np.unique(np.column_stack([centroid_item, rq.codes]), axis=0,
                                                return_index=True, return_inverse=True)
    pointer = first_of_group[prefix_group.reshape(-1)]
    distinct = np.flatnonzero(pointer == np.arange(num_centroids))
    codes = np.zeros((num_centroids, config.num_levels + 1), np.int64)
    codes[distinct] = collisions.add_dedup_digit(rq.codes[distinct])
    if codes[:, -1].max() >= config.codebook_size:
        raise ValueError(f"{codes[:, -1].max() + 1} items share one SID prefix, more than the collision digit's "
                         f"{config.codebook_size} codes; raise tokenizer.pctx.codebook_size")
    after_digit_merge = np.bincount(centroid_item[distinct], minlength=num_items)

    # 5b: SIDs used by fewer than tau of their item's training events merge into the nearest survivor.
    event_counts = np.bincount(pointer[event_centroid[train_ids]], minlength=num_centroids)
    starts = np.searchsorted(centroid_item, np.arange(num_items))
    ends = np.searchsorted(centroid_item, np.arange(num_items), side="right")
    if config.merge_threshold > 0:
        for item in np.flatnonzero(after_digit_merge > 1):
            s, e = starts[item], ends[item]
            own = merge_rare(event_counts[s:e], centroids[s:e], config.merge_threshold)
            pointer[s:e] = np.where(pointer[s:e] == np.arange(s, e), s + own, pointer[s:e])
    pointer = _resolve(pointer)
    # Events outside training: nearest centroid of their item (merged ones included).
    for event in np.flatnonzero(~train_events):
        item = event_items[event]
        s, e = starts[item], ends[item]
        event_centroid[event] = s + np.argmin(np.sum((centroids[s:e] - contexts[event]) ** 2, 1))

    survivors = np.flatnonzero(pointer == np.arange(num_centroids))
    row_of = np.full(num_centroids, -1, np.int64)
    row_of[survivors] = np.arange(len(survivors))
    event_sid = row_of[pointer[event_centroid]]
    sid_item = centroid_item[survivors]
    sid_counts = np.bincount(event_sid[train_ids], minlength=len(survivors))
    sid_counts = np.where(counts[sid_item] == 0, 1, sid_counts)  # items without training events
    per_item = np.bincount(sid_item, minlength=num_items)
    table = SIDTable(codes[survivors], (config.codebook_size,) * (config.num_levels + 1), list(rq.codebooks),
                     meta={"tokenizer": "pctx", "personalized": config.personalized}, sid_item=sid_item,
                     event_sid=event_sid, sid_counts=sid_counts)
    centroids_per_item = np.bincount(centroid_item, minlength=num_items)
    summary = {
        "num_centroids": num_centroids, "num_sids": len(survivors),
        "sids_per_item": {"clusters": _count_histogram(centroids_per_item),
                          "after_digit_merge": _count_histogram(after_digit_merge),
                          "final": _count_histogram(per_item)},
        "mean_sids_per_item": {"clusters": float(centroids_per_item.mean()),
                               "after_digit_merge": float(after_digit_merge.mean()), "final": float(per_item.mean())},
        "prefix_collision_rate": float(1.0 - len(np.unique(rq.codes, axis=0)) / num_centroids),
        "recon_error": float(rq.recon_error), "residual_energy": [float(e) for e in rq.residual_energy],
        "rq_seconds": float(rq.fit_seconds)}
    return table, summary
