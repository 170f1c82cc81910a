"""The embedded default dataset: synthetic users and items with known, recoverable structure.

Items live in the leaves of a generated category tree and carry hierarchical latent vectors
(level-1 centre + level-2 offset + ... + item noise). Their text (brand, title, description)
only partly reveals the category. Users hold 1-4 interests, each a node of the tree; every
event is one of

* preference: pick an interest, then an item with probability ∝ popularity^a · exp(affinity/T),
* sequential: a fixed successor of the previous item (same or sibling leaf),
* noise: a uniformly random item.

Actions follow the ground-truth affinity of the event's item to the user's interests.
``generate`` returns the canonical ``Dataset`` plus a ``GroundTruth`` holding everything
needed to check what a model recovered.

With ``exposure_log=True`` the events are instead what a logging policy *showed* each user — a
mix of popular, personalised (drawn from the preference model above) and uniformly random
items — and each response comes from a known click model,
``P(click | user, item) = sigmoid(b + click_slope · exp(affinity / action_scale))`` with ``b`` set
so that the logged click-through rate is ``target_ctr``. A clicked exposure's action is click,
cart or buy (more engagement, deeper action), any other is skip; ``GroundTruth.click_prob``
holds every exposure's true click probability.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gr_jax.data.dataset import ACTIONS, Dataset, Interactions, ItemTable
from gr_jax.data.errors import DataError

# Values of ``GroundTruth.event_kind``: the event stream's kinds, then the exposure log's policy sources.
EVENT_PREFERENCE, EVENT_SEQUENTIAL, EVENT_NOISE = 0, 1, 2
EXPOSURE_POPULAR, EXPOSURE_PERSONALISED, EXPOSURE_RANDOM = 3, 4, 5

# Action logits = base + slope * engagement (engagement in [0, 1]), one row per ACTIONS entry.
_ACTION_BASE = np.array([1.0, 0.2, -1.5, -2.5, 1.0])
_ACTION_SLOPE = np.array([0.0, 0.8, 2.5, 3.5, -3.5])

_ONSETS = "b c d f g h k l m n p r s t v z br cr dr fl gr pl st tr sh".split()
_VOWELS = "a e i o u ai ea io ou".split()
_CODAS = ["", "", "n", "r", "s", "l", "x", "m"]
_COLOURS = "red blue green black white grey silver navy olive amber teal coral".split()
_SIZES = "mini small medium large xl compact".split()


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic generator; the defaults give a dataset that trains in minutes on a CPU."""

    seed: int = 0
    num_users: int = 2000
    num_items: int = 1000
    branching: tuple[int, ...] = (5, 4, 4)  # children per node at each level -> 80 leaves, depth 3
    min_leaf_items: int = 2  # every leaf gets at least this many items
    leaf_size_concentration: float = 1.0  # Dirichlet alpha of leaf sizes; lower = more uneven
    latent_dim: int = 32
    level_scales: tuple[float, ...] = (1.0, 0.6, 0.35)  # norm of each level's offset, coarse -> fine
    item_noise: float = 0.25  # norm of the item's own offset from its leaf centre
    topic_words_per_node: int = 3
    brands_per_group: int = 8  # brands owned by each level-1 subtree
    brand_cross_prob: float = 0.15  # chance an item's brand comes from any subtree
    title_topic_prob: float = 0.3  # chance each topic word of the item's path enters its title
    title_attribute_prob: float = 0.5  # chance of a colour or size in the title
    description_words: tuple[int, int] = (8, 16)  # inclusive range of description length
    description_topic_prob: float = 0.35  # chance a description word is a topic word (else filler)
    num_filler_words: int = 60
    empty_description_frac: float = 0.02
    zipf_exponent: float = 1.0  # item popularity ∝ 1 / rank^exponent
    popularity_weight: float = 1.0  # exponent a in popularity^a of the preference model
    temperature: float = 0.15  # T in exp(affinity / T); affinity = -squared latent distance
    interest_count_probs: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)  # P(user has 1, 2, 3, 4 interests)
    interest_level_probs: tuple[float, ...] = (0.1, 0.5, 0.4)  # tree level of an interest, coarse -> fine
    p_seq: float = 0.3  # chance an event (not the first) follows the previous item's successors
    p_noise: float = 0.1  # chance an event is a uniformly random item
    num_successors: int = 4
    successor_same_leaf: float = 3.0  # weight of same-leaf vs sibling-leaf items among successors
    successor_popularity_weight: float = 0.5  # successors drawn ∝ popularity^this (times the leaf weight)
    min_length: int = 5
    mean_extra_length: float = 8.0  # geometric extra events on top of min_length
    max_length: int = 50
    action_scale: float = 0.5  # engagement = exp(affinity / action_scale)
    start_time: int = 1_672_531_200  # 2023-01-01, seconds
    start_spread_days: float = 180.0
    mean_gap_hours: float = 6.0
    # Exposure log (see the module docstring): replaces the event stream when on.
    exposure_log: bool = False
    exposure_policy: tuple[float, ...] = (0.3, 0.4, 0.3)  # shares of popular, personalised, random exposures
    exposures_per_event: int = 25  # a user's exposures = this x the length their event stream would have
    target_ctr: float = 0.04  # logged click-through rate the click model's bias is solved for
    click_slope: float = 8.0  # how strongly P(click) rises with engagement

    def validate(self) -> None:
        """Raises DataError when the knobs are inconsistent."""
        depth = len(self.branching)
        if depth < 1 or min(self.branching) < 1:
            raise DataError("synthetic.branching needs at least one level, each with >= 1 child")
        for name in ("level_scales", "interest_level_probs"):
            if len(getattr(self, name)) != depth:
                raise DataError(f"synthetic.{name} needs one entry per tree level ({depth})")
        if self.num_items < int(np.prod(self.branching)) * self.min_leaf_items:
            raise DataError(f"synthetic.num_items={self.num_items} is below leaves x min_leaf_items; "
                            "lower branching or min_leaf_items")
        if not 1 <= self.min_length <= self.max_length:
            raise DataError("synthetic needs 1 <= min_length <= max_length")
        if self.p_seq + self.p_noise > 1 or min(self.p_seq, self.p_noise) < 0:
            raise DataError("synthetic.p_seq and p_noise must be >= 0 and sum to <= 1")
        if self.num_users < 1 or self.num_successors < 1 or not self.interest_count_probs:
            raise DataError("synthetic needs num_users >= 1, num_successors >= 1 and non-empty interest_count_probs")
        if len(self.exposure_policy) != 3 or min(self.exposure_policy) < 0 or sum(self.exposure_policy) <= 0:
            raise DataError("synthetic.exposure_policy needs three non-negative shares (popular, personalised, "
                            "random) with a positive sum")
        if not 0 < self.target_ctr < 1 or self.exposures_per_event < 1:
            raise DataError("synthetic needs 0 < target_ctr < 1 and exposures_per_event >= 1")


@dataclasses.dataclass
class GroundTruth:
    """Everything the generator knew. Node ids are global, level by level (level 0 = coarsest)."""

    node_names: list[str]
    node_topic_words: list[tuple[str, ...]]
    node_level: np.ndarray  # int32 [num_nodes], 0-based
    node_parent: np.ndarray  # int32 [num_nodes], -1 at level 0
    node_centres: np.ndarray  # float32 [num_nodes, latent_dim]
    level_offsets: np.ndarray  # int64 [depth + 1]; level l holds nodes level_offsets[l]:level_offsets[l+1]
    item_latents: np.ndarray  # float32 [num_items, latent_dim]
    item_category_ids: np.ndarray  # int32 [num_items, depth], index within each level
    popularity: np.ndarray  # float32 [num_items], sums to 1
    user_interests: np.ndarray  # int32 [num_users, max_interests], node ids, -1 padded
    user_interest_weights: np.ndarray  # float32 [num_users, max_interests], rows sum to 1
    successors: np.ndarray  # int32 [num_items, num_successors]
    event_kind: np.ndarray  # int8 [num_events], EVENT_PREFERENCE / EVENT_SEQUENTIAL / EVENT_NOISE
    event_interest: np.ndarray  # int32 [num_events], chosen interest node of preference events, else -1
    event_affinity: np.ndarray  # float32 [num_events], max affinity of the item to the user's interests
    event_offsets: np.ndarray  # int64 [num_users + 1]: user u's events are [event_offsets[u], event_offsets[u+1])
    click_prob: np.ndarray | None = None  # float32 [num_events], exposure log only: true P(click | user, item)

    @property
    def depth(self) -> int:
        return self.item_category_ids.shape[1]

    @property
    def item_node_ids(self) -> np.ndarray:
        """Global node id of each item's ancestor at each level, int32 [num_items, depth]."""
        return (self.item_category_ids + self.level_offsets[:-1]).astype(np.int32)

    def per_event(self, values: np.ndarray, user_keys: list[str]) -> np.ndarray:
        """Per-event ``values`` (generation order) for the users ``user_keys`` (``"u<id>"``, e.g. a
        dataset's users after short ones were dropped), in that order."""
        users = [int(key[1:]) for key in user_keys]
        return np.concatenate([values[self.event_offsets[u]:self.event_offsets[u + 1]] for u in users])

    def in_subtree(self, nodes: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each item lies under the matching node (broadcast); False for node -1."""
        nodes, items = np.broadcast_arrays(np.asarray(nodes), np.asarray(items))
        safe = np.maximum(nodes, 0)
        return (nodes >= 0) & (self.item_node_ids[items, self.node_level[safe]] == safe)


def generate(config: SyntheticConfig = SyntheticConfig()) -> tuple[Dataset, GroundTruth]:
    """Builds the synthetic dataset and its ground truth; identical output for identical config."""
    config.validate()
    rng_tree, rng_items, rng_text, rng_users, rng_events = [
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)]
    tree = _build_tree(config, rng_tree)
    item_leaf = _assign_leaves(config, tree["level_offsets"], rng_items)
    item_nodes = _ancestors(tree["node_parent"], item_leaf, len(config.branching))
    noise = _offsets(rng_items, config.num_items, config.latent_dim, config.item_noise)
    latents = tree["node_centres"][item_leaf] + noise
    popularity = _zipf(config.num_items, config.zipf_exponent, rng_items)
    successors = _successors(config, item_nodes, popularity, rng_items)
    affinity = Affinity(tree["node_centres"], latents)
    interests, weights = _user_interests(config, tree, item_nodes, rng_users)
    lengths = _lengths(config, rng_users)
    if config.exposure_log:
        lengths = lengths * config.exposures_per_event
        events = _exposures(config, lengths, interests, weights, popularity, affinity, rng_events)
    else:
        events = _events(config, lengths, interests, weights, popularity, affinity, successors, rng_events)
    event_users = np.repeat(np.arange(config.num_users), lengths)
    event_affinity = affinity.of_events(interests, event_users, events["items"])
    if config.exposure_log:
        events |= _responses(config, event_affinity, rng_events)
    else:
        events["actions"] = _actions(event_affinity, config.action_scale, rng_events)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    users = Interactions(
        [f"u{u}" for u in range(config.num_users)], offsets, events["items"], actions=events["actions"],
        timestamps=_timestamps(config, lengths, rng_events))
    table = _item_table(config, tree, item_nodes, rng_text)
    truth = GroundTruth(
        tree["node_names"], tree["node_topic_words"], tree["node_level"], tree["node_parent"],
        tree["node_centres"].astype(np.float32), tree["level_offsets"], latents.astype(np.float32),
        (item_nodes - tree["level_offsets"][:-1]).astype(np.int32), popularity.astype(np.float32),
        interests, weights, successors, events["kind"], events["interest"], event_affinity, offsets,
        events.get("click_prob"))
    return Dataset("synthetic", table, users), truth


def describe(dataset: Dataset, truth: GroundTruth) -> dict:
    """Headline statistics of a generated dataset (for logs and the README)."""
    stats = dataset.stats()
    counts = np.sort(np.bincount(dataset.users.items, minlength=dataset.num_items))[::-1]
    top = max(1, dataset.num_items // 10)
    action_counts = np.bincount(dataset.users.actions, minlength=len(ACTIONS)) / len(dataset.users.items)
    names = ("preference", "sequential", "noise", "exposure_popular", "exposure_personalised", "exposure_random")
    kind_counts = np.bincount(truth.event_kind, minlength=len(names)) / len(truth.event_kind)
    stats.update(
        action_mix={a: round(float(f), 4) for a, f in zip(ACTIONS, action_counts)},
        event_kinds={k: round(float(f), 4) for k, f in zip(names, kind_counts) if f > 0},
        top10pct_item_share=float(counts[:top].sum() / counts.sum()),
        bottom50pct_item_share=float(counts[dataset.num_items // 2:].sum() / counts.sum()))
    return stats


# ---------------------------------------------------------------- category tree and words


def _new_word(rng: np.random.Generator, used: set[str], syllables: tuple[int, int]) -> str:
    """A pronounceable word of syllables[0]..syllables[1] syllables not in ``used`` (then added)."""
    while True:
        n = rng.integers(syllables[0], syllables[1] + 1)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)
        if word not in used:
            used.add(word)
            return word


def _words(rng: np.random.Generator, used: set[str], count: int, syllables: tuple[int, int]) -> list[str]:
    return [_new_word(rng, used, syllables) for _ in range(count)]


def _offsets(rng: np.random.Generator, n: int, dim: int, scale: float) -> np.ndarray:
    """Gaussian offsets whose expected norm² is scale²."""
    return rng.normal(0.0, scale / np.sqrt(dim), size=(n, dim))


def _build_tree(config: SyntheticConfig, rng: np.random.Generator) -> dict:
    """Nodes level by level with names, topic words, parents and latent centres."""
    sizes = np.cumprod(config.branching)
    level_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    num_nodes = int(level_offsets[-1])
    node_level = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    parent_in_level = [np.full(sizes[0], -1)] + [
        np.repeat(np.arange(sizes[l - 1]), config.branching[l]) + level_offsets[l - 1] for l in range(1, len(sizes))]
    node_parent = np.concatenate(parent_in_level).astype(np.int32)
    centres = np.zeros((num_nodes, config.latent_dim))
    for l, scale in enumerate(config.level_scales):
        lo, hi = level_offsets[l], level_offsets[l + 1]
        base = centres[node_parent[lo:hi]] if l else 0.0
        centres[lo:hi] = base + _offsets(rng, hi - lo, config.latent_dim, scale)
    used: set[str] = set()
    names = [w.capitalize() for w in _words(rng, used, num_nodes, (2, 3))]
    topics = _words(rng, used, num_nodes * config.topic_words_per_node, (2, 2))
    k = config.topic_words_per_node
    return {"node_names": names, "node_topic_words": [tuple(topics[i * k:(i + 1) * k]) for i in range(num_nodes)],
            "node_level": node_level, "node_parent": node_parent, "node_centres": centres,
            "level_offsets": level_offsets, "used_words": used}


def _assign_leaves(config: SyntheticConfig, level_offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global leaf id per item: min_leaf_items each, the rest by uneven Dirichlet shares, shuffled."""
    num_leaves = int(level_offsets[-1] - level_offsets[-2])
    shares = rng.dirichlet(np.full(num_leaves, config.leaf_size_concentration))
    extra = rng.multinomial(config.num_items - num_leaves * config.min_leaf_items, shares)
    leaf = np.repeat(np.arange(num_leaves), extra + config.min_leaf_items)
    return rng.permutation(leaf) + level_offsets[-2]


def _ancestors(node_parent: np.ndarray, leaf: np.ndarray, depth: int) -> np.ndarray:
    """Global node ids [n, depth] of each leaf's path, coarse -> fine."""
    path = [leaf]
    for _ in range(depth - 1):
        path.append(node_parent[path[-1]])
    return np.stack(path[::-1], axis=1).astype(np.int32)


# ---------------------------------------------------------------- items


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity ∝ 1/rank^exponent with ranks shuffled over items."""
    pop = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(pop / pop.sum())


# Entries of one [nodes, items] block of the affinity matrix (float64): 256 MB. Small catalogues
# fit in one block; a 10M-item catalogue is processed a few nodes at a time.
_BLOCK_ENTRIES = 2**25
# Rows of per-event draws processed at once (their [rows, choices] weights), for the same reason.
_EVENT_CHUNK = 2**22


class Affinity:
    """The ground-truth affinity ``-|centre(node) - latent(item)|²`` of every (node, item), computed
    in blocks of nodes so that it never exists whole (``[num_nodes, num_items]`` is 8 GB at 10M
    items); every block of a small catalogue is the whole matrix."""

    def __init__(self, centres: np.ndarray, latents: np.ndarray):
        self.centres, self.latents = centres, latents
        self.latent_norms = (latents * latents).sum(1)  # once, not per block

    def blocks(self):
        """``(first node, [nodes, num_items] affinity)`` blocks covering every node, in order."""
        step = max(1, _BLOCK_ENTRIES // len(self.latents))
        for lo in range(0, len(self.centres), step):
            centres = self.centres[lo:lo + step]
            distances = (centres * centres).sum(1)[:, None] + self.latent_norms[None, :] - 2 * centres @ self.latents.T
            yield lo, -np.maximum(distances, 0.0)

    def of_events(self, interests: np.ndarray, event_users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Max affinity of each event's item over its user's interests (rows of node ids, -1 padded)."""
        out = np.full(len(items), -np.inf, np.float32)
        nodes = interests[event_users]
        for lo, block in self.blocks():
            for node in nodes.T:
                here = np.flatnonzero((node >= lo) & (node < lo + len(block)))
                # max commutes with the (monotone) float32 rounding: the same as rounding the max
                out[here] = np.maximum(out[here], block[node[here] - lo, items[here]].astype(np.float32))
        return out


def _successors(config: SyntheticConfig, item_nodes: np.ndarray, popularity: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Per item, ``num_successors`` distinct items under its leaf's parent (same leaf and popular ones favoured)."""
    k = config.num_successors
    group = item_nodes[:, -2] if item_nodes.shape[1] > 1 else np.zeros(len(item_nodes), np.int32)
    out = np.empty((len(item_nodes), k), np.int32)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        m = len(members)
        if m == 1:
            out[members] = members[0]
            continue
        if m > _GUMBEL_GROUP:
            out[members] = _successive_draws(config, members, item_nodes[members, -1], popularity[members], rng)
            continue
        same_leaf = item_nodes[members, -1][:, None] == item_nodes[members, -1][None, :]
        keys = (np.log(np.where(same_leaf, config.successor_same_leaf, 1.0)) + rng.gumbel(size=(m, m))
                + config.successor_popularity_weight * np.log(popularity[members])[None, :])
        np.fill_diagonal(keys, -np.inf)
        order = np.argsort(-keys, axis=1)[:, :min(k, m - 1)]
        out[members] = members[order[:, np.arange(k) % order.shape[1]]]
    return out


# Groups up to this size draw successors by Gumbel top-k over an [m, m] key matrix; larger ones
# (a 10M-item catalogue has ~500k items per group) by successive draws, the same distribution.
_GUMBEL_GROUP = 2048


def _successive_draws(config: SyntheticConfig, members: np.ndarray, leaf: np.ndarray, popularity: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """``num_successors`` distinct successors per member (never itself): sampling without
    replacement ∝ ``successor_same_leaf^[same leaf] · popularity^successor_popularity_weight``, as
    successive draws ∝ popularity, each kept with probability ``weight / max weight`` and redrawn
    when rejected, a repeat or the member itself (what Gumbel top-k samples, in O(m) memory)."""
    m, k = len(members), config.num_successors
    cdf = np.cumsum(popularity.astype(np.float64) ** config.successor_popularity_weight)
    boost = config.successor_same_leaf
    chosen = np.full((m, k), -1, np.int64)
    for slot in range(k):
        pending = np.arange(m)
        while len(pending):
            draw = np.minimum(np.searchsorted(cdf, rng.random(len(pending)) * cdf[-1], side="right"), m - 1)
            same_leaf = leaf[draw] == leaf[pending]
            keep_prob = np.where(same_leaf, boost, 1.0) / max(boost, 1.0)
            ok = (rng.random(len(pending)) < keep_prob) & (draw != pending)
            ok &= ~(chosen[pending, :slot] == draw[:, None]).any(1)
            chosen[pending[ok], slot] = draw[ok]
            pending = pending[~ok]
    return members[chosen].astype(np.int32)


def _item_table(config: SyntheticConfig, tree: dict, item_nodes: np.ndarray, rng: np.random.Generator) -> ItemTable:
    """Brands, titles, descriptions, category paths and prices."""
    n = config.num_items
    names, topics = tree["node_names"], tree["node_topic_words"]
    used = set(tree["used_words"])
    num_groups = config.branching[0]
    brands = [w.capitalize() for w in _words(rng, used, num_groups * config.brands_per_group, (2, 2))]
    fillers = _words(rng, used, config.num_filler_words, (1, 2))
    group = item_nodes[:, 0]
    cross = rng.random(n) < config.brand_cross_prob
    brand_group = np.where(cross, rng.integers(num_groups, size=n), group)
    brand_idx = brand_group * config.brands_per_group + rng.integers(config.brands_per_group, size=n)
    empty = np.zeros(n, bool)
    empty[rng.permutation(n)[:round(config.empty_description_frac * n)]] = True
    titles, descriptions = [], []
    for i in range(n):
        path_words = [w for node in item_nodes[i] for w in topics[node]]
        titles.append(_title(config, brands[brand_idx[i]], path_words, rng))
        descriptions.append("" if empty[i] else _description(config, path_words, fillers, rng))
    leaf_base = np.exp(rng.normal(3.0, 1.0, size=len(names)))
    price = np.round(leaf_base[item_nodes[:, -1]] * np.exp(rng.normal(0.0, 0.3, size=n)), 2).astype(np.float32)
    return ItemTable(
        keys=[str(i) for i in range(n)], title=titles, description=descriptions,
        brand=[brands[b] for b in brand_idx], categories=[tuple(names[v] for v in row) for row in item_nodes],
        price=price)


def _title(config: SyntheticConfig, brand: str, path_words: list[str], rng: np.random.Generator) -> str:
    """Brand + a random subset of the path's topic words + optional colour/size + a model code."""
    keep = rng.random(len(path_words)) < config.title_topic_prob
    words = [brand] + [w for w, k in zip(path_words, keep) if k]
    if rng.random() < config.title_attribute_prob:
        words.append(rng.choice(_COLOURS if rng.random() < 0.5 else _SIZES))
    letters = "".join(rng.choice(list("ABCDEFGHKLMNPRSTVXZ"), size=2))
    words.append(f"{letters}-{rng.integers(100, 1000)}")
    return " ".join(words)


def _description(config: SyntheticConfig, path_words: list[str], fillers: list[str], rng: np.random.Generator) -> str:
    """One sentence mixing the path's topic words with filler words."""
    lo, hi = config.description_words
    length = rng.integers(lo, hi + 1)
    topical = rng.random(length) < config.description_topic_prob
    topic_pick = rng.integers(len(path_words), size=length)
    filler_pick = rng.integers(len(fillers), size=length)
    words = [path_words[t] if is_topic else fillers[f] for is_topic, t, f in zip(topical, topic_pick, filler_pick)]
    return " ".join(words).capitalize() + "."


# ---------------------------------------------------------------- users and events


def _user_interests(config: SyntheticConfig, tree: dict, item_nodes: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct interest nodes per user and their Dirichlet weights.

    An interest's level follows ``interest_level_probs``; within a level, nodes are drawn ∝ their item count.
    """
    num_nodes = len(tree["node_names"])
    node_items = np.bincount(item_nodes.ravel(), minlength=num_nodes).astype(float)
    level = tree["node_level"]
    level_items = np.bincount(level, weights=node_items)
    node_prob = np.asarray(config.interest_level_probs)[level] * node_items / level_items[level]
    max_k = len(config.interest_count_probs)
    counts_p = np.asarray(config.interest_count_probs, float)
    num = rng.choice(np.arange(1, max_k + 1), size=config.num_users, p=counts_p / counts_p.sum())
    num = np.minimum(num, int((node_prob > 0).sum()))
    top = np.empty((config.num_users, max_k), np.int64)
    chunk = max(1, _BLOCK_ENTRIES // num_nodes)
    for lo in range(0, config.num_users, chunk):  # chunked draws continue one stream: the same keys
        with np.errstate(divide="ignore"):
            keys = np.log(node_prob) + rng.gumbel(size=(min(chunk, config.num_users - lo), num_nodes))
        top[lo:lo + chunk] = np.argsort(-keys, axis=1)[:, :max_k]
    mask = np.arange(max_k) < num[:, None]
    interests = np.where(mask, top, -1).astype(np.int32)
    weights = rng.gamma(1.0, size=(config.num_users, max_k)) * mask
    return interests, (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def _lengths(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """min_length + geometric extra (mean ``mean_extra_length``), capped at max_length."""
    extra = rng.geometric(1.0 / (1.0 + config.mean_extra_length), size=config.num_users) - 1
    return np.minimum(config.min_length + extra, config.max_length).astype(np.int64)


def _sample_rows(cdf: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per requested row, drawn from that row's (unnormalised) cumulative weights."""
    return _search_rows(cdf, rows, rng.random(len(rows)))


def _search_rows(cdf: np.ndarray, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """The column of each of ``rows`` where its uniform draw falls in the row's cumulative weights."""
    flat = (cdf / cdf[:, -1:] + np.arange(len(cdf))[:, None]).ravel()
    col = np.searchsorted(flat, rows + uniform, side="right") - rows * cdf.shape[1]
    return np.clip(col, 0, cdf.shape[1] - 1)


def _sample_each(weights_of, count: int, rng: np.random.Generator) -> np.ndarray:
    """One draw per row ``i < count`` from ``weights_of(slice)`` (the unnormalised ``[rows, choices]``
    weights of those rows), a chunk of rows at a time; the same draws as one ``_sample_rows``."""
    out = np.empty(count, np.int64)
    for lo in range(0, count, _EVENT_CHUNK):
        part = slice(lo, min(lo + _EVENT_CHUNK, count))
        cdf = np.cumsum(weights_of(part), axis=1)
        out[part] = _sample_rows(cdf, np.arange(len(cdf)), rng)
    return out


def _sample_preference(config: SyntheticConfig, popularity: np.ndarray, affinity: Affinity, nodes: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """An item per entry of ``nodes`` from the preference model of that interest node, one block of
    nodes' cumulative weights at a time."""
    uniform = rng.random(len(nodes))
    items = np.zeros(len(nodes), np.int64)
    for lo, block in affinity.blocks():
        here = np.flatnonzero((nodes >= lo) & (nodes < lo + len(block)))
        items[here] = _search_rows(_preference_cdf(config, popularity, block), nodes[here] - lo, uniform[here])
    return items


def _events(config: SyntheticConfig, lengths: np.ndarray, interests: np.ndarray, weights: np.ndarray,
            popularity: np.ndarray, affinity: Affinity, successors: np.ndarray,
            rng: np.random.Generator) -> dict:
    """Items, kinds and chosen interests of all events, flat in user order."""
    num_events = int(lengths.sum())
    user = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(num_events) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    u = rng.random(num_events)
    kind = np.full(num_events, EVENT_PREFERENCE, np.int8)
    kind[(u < config.p_noise + config.p_seq) & (pos > 0)] = EVENT_SEQUENTIAL
    kind[u < config.p_noise] = EVENT_NOISE
    slot = _sample_rows(np.cumsum(weights, axis=1), user, rng)
    interest = np.where(kind == EVENT_PREFERENCE, interests[user, slot], -1).astype(np.int32)
    items = np.where(kind == EVENT_PREFERENCE, _sample_preference(config, popularity, affinity, np.maximum(interest, 0),
                                                                  rng),
                     rng.integers(len(popularity), size=num_events)).astype(np.int32)
    successor_slot = rng.integers(successors.shape[1], size=num_events)
    seq = np.flatnonzero(kind == EVENT_SEQUENTIAL)
    seq_pos = pos[seq]
    for p in np.unique(seq_pos):  # chains resolve in position order
        idx = seq[seq_pos == p]
        items[idx] = successors[items[idx - 1], successor_slot[idx]]
    return {"items": items, "kind": kind, "interest": interest}


def _preference_cdf(config: SyntheticConfig, popularity: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """Unnormalised cumulative item weights ``[nodes, num_items]`` of the preference model, given
    those nodes' affinities."""
    logits = config.popularity_weight * np.log(popularity)[None, :] + affinity / config.temperature
    return np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)


def _exposures(config: SyntheticConfig, counts: np.ndarray, interests: np.ndarray, weights: np.ndarray,
               popularity: np.ndarray, affinity: Affinity, rng: np.random.Generator) -> dict:
    """Items the logging policy shows, flat in user order, and which policy source showed each."""
    n = int(counts.sum())
    user = np.repeat(np.arange(len(counts)), counts)
    policy = np.asarray(config.exposure_policy, float)
    source = np.searchsorted(np.cumsum(policy / policy.sum()), rng.random(n), side="right").clip(0, 2)
    popular = np.searchsorted(np.cumsum(popularity) / popularity.sum(), rng.random(n), side="right")
    slot = _sample_rows(np.cumsum(weights, axis=1), user, rng)
    interest = interests[user, slot]
    personalised = _sample_preference(config, popularity, affinity, interest, rng)
    uniform = rng.integers(len(popularity), size=n)
    items = np.choose(source, [popular.clip(0, len(popularity) - 1), personalised, uniform]).astype(np.int32)
    return {"items": items, "kind": (EXPOSURE_POPULAR + source).astype(np.int8),
            "interest": np.where(source == 1, interest, -1).astype(np.int32)}


def click_bias(engagement: np.ndarray, slope: float, target_ctr: float) -> float:
    """The bias ``b`` with ``mean(sigmoid(b + slope * engagement)) = target_ctr`` (bisection)."""
    low, high = -50.0, 50.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + slope * engagement)))) < target_ctr:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _responses(config: SyntheticConfig, event_affinity: np.ndarray, rng: np.random.Generator) -> dict:
    """Each exposure's true click probability and drawn action (click / cart / buy when clicked, else skip)."""
    engagement = np.exp(event_affinity / config.action_scale)
    bias = click_bias(engagement, config.click_slope, config.target_ctr)
    click_prob = 1.0 / (1.0 + np.exp(-(bias + config.click_slope * engagement)))
    clicked = rng.random(len(engagement)) < click_prob
    deeper = lambda rows: np.exp(_ACTION_BASE[1:4] + _ACTION_SLOPE[1:4] * engagement[rows, None])  # click, cart, buy
    positive = 1 + _sample_each(deeper, len(engagement), rng)
    actions = np.where(clicked, positive, ACTIONS.index("skip")).astype(np.int8)
    return {"actions": actions, "click_prob": click_prob.astype(np.float32)}


def _actions(event_affinity: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Action codes: engagement exp(affinity/scale) shifts mass from view/skip to cart/buy."""
    engagement = np.exp(event_affinity / scale)
    probs = lambda rows: np.exp(_ACTION_BASE + _ACTION_SLOPE * engagement[rows, None])
    return _sample_each(probs, len(engagement), rng).astype(np.int8)


def _timestamps(config: SyntheticConfig, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing seconds per user: a random start plus exponential gaps."""
    start = config.start_time + rng.integers(0, int(config.start_spread_days * 86400) + 1, size=len(lengths))
    gaps = 1 + rng.exponential(config.mean_gap_hours * 3600, size=int(lengths.sum())).astype(np.int64)
    first = np.cumsum(lengths) - lengths
    gaps[first] = 0
    cum = np.cumsum(gaps)
    return np.repeat(start, lengths) + cum - np.repeat(cum[first], lengths)


if __name__ == "__main__":
    for key, value in describe(*generate()).items():
        print(f"{key}: {value}")
