"""DCCF: Disentangled Contrastive Collaborative Filtering (Ren et al., SIGIR 2023), and LightGCN
(He et al., SIGIR 2020) as its reduction.

The model learns one ego vector per user and per item and propagates them over the user-item
graph of the training split (``train_event_mask``: no validation or test event is an edge), the
whole graph at every step (Scientific's graph has ~42k edges). Layer ``l`` computes from its input
``E`` (users and items stacked, ``[U + I, D]``):

- ``Z = Â E``: graph messages, ``Â = D^-1/2 A D^-1/2`` of the binary bipartite adjacency;
- ``R``: intent-aware messages, ``softmax(E_u C_u) C_uᵀ`` for users (``C_u [D, K]``, K intent
  prototypes) and the same with ``C_i`` for items;
- ``H_Z = Â_Z E`` and ``H_R = Â_R E``: adaptive augmentation, the adjacency re-weighted per edge by
  ``(cos(h, t) + 1) / 2`` of the ``Z`` (or ``R``) vectors of its two ends and row-normalised;
- output ``Z + R + H_Z + H_R + E`` (the last term: ``model.layer_residual``).

The final vectors sum (``layer_combination='sum'``) the layer outputs with the ego layer; a
user's score for an item is the dot product of their final vectors. The loss of a batch of
(user, positive item) rows with one uniformly sampled negative item each is BPR + ``embedding_reg``
× the batch's squared ego norms (summed over rows) + ``intent_reg`` × the prototypes' squared norms
+ ``contrastive_weight`` × InfoNCE (``contrastive_temperature``, cosine) between ``Z`` and each of
``R``, ``H_Z``, ``H_R`` of every layer, over the batch's distinct users and its distinct positive
items (the other rows are the negatives).

``num_intents=0, augmentation=False, layer_residual=False, layer_combination='mean',
contrastive_weight=0, intent_reg=0`` (``configs/dccf.py``'s ``LIGHTGCN``) is plain LightGCN:
``E_{l+1} = Â E_l``, final ``mean(E_0..E_L)``, BPR + L2 on the ego vectors.

Training rows are the graph's edges (one (user, position) row per distinct user-item pair of the
training split, including each user's first event), so the shared trainer's batches carry the
BPR positives as ``target``. Propagation is ``jax.ops.segment_sum`` over the edge list; no dense
adjacency is formed. Everything computes in float32: sums over node degrees and the small
matmuls gain nothing from bfloat16.

Ranking scores every item against the user's final vector; ``exclude_history`` drops the items
of the batch's history (Scientific has no repeated targets). A user's vector comes from the
training graph alone: on the test split it has not seen the validation event, which sequence
models read from the history, so its test metrics trail its validation metrics.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.config_schema import check_choice
from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import train_event_mask
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.ops import NEG_INF, l2_normalize


@dataclasses.dataclass(frozen=True)
class Graph:
    """The user-item graph of the training split. Nodes: users ``0..U-1``, then items ``U..U+I-1``.

    ``heads``/``tails``: both directions of every edge, sorted by head; ``norm``: ``Â``'s value
    ``1 / sqrt(deg(head) deg(tail))`` of each; ``rows``: one (user, position) row per edge, the
    user's first training event with that item."""

    num_users: int
    num_items: int
    heads: np.ndarray  # int32 [2E]
    tails: np.ndarray  # int32 [2E]
    norm: np.ndarray  # float32 [2E]
    rows: np.ndarray  # int64 [E, 2]

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def num_edges(self) -> int:
        return len(self.rows)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of the undirected edges."""
        user_to_item = self.heads < self.num_users
        return self.heads[user_to_item], self.tails[user_to_item] - self.num_users


def build_graph(interactions: Interactions, num_items: int) -> Graph:
    """The bipartite graph of the training events, one edge per distinct (user, item) pair. Events
    are the kind the evaluation ranks: every event, or with ``data.targets='positive'`` (an exposure
    log) the positive ones that ``Interactions.targets`` marks."""
    num_users = len(interactions)
    keep = train_event_mask(interactions)
    if interactions.targets is not None:
        keep = keep & np.asarray(interactions.targets, bool)
    user = np.repeat(np.arange(num_users), interactions.lengths)
    position = np.arange(len(interactions.items)) - interactions.offsets[user]
    events = np.flatnonzero(keep)
    pair = user[events].astype(np.int64) * num_items + interactions.items[events]
    _, first = np.unique(pair, return_index=True)  # sorted by (user, item)
    events = events[first]
    users, items = user[events], interactions.items[events].astype(np.int64)
    heads = np.concatenate([users, num_users + items])
    tails = np.concatenate([num_users + items, users])
    order = np.argsort(heads, kind="stable")
    heads, tails = heads[order], tails[order]
    degree = np.bincount(heads, minlength=num_users + num_items).astype(np.float64)
    norm = 1.0 / np.sqrt(degree[heads] * degree[tails])
    return Graph(num_users, num_items, heads.astype(np.int32), tails.astype(np.int32), norm.astype(np.float32),
                 np.stack([users, position[events]], axis=1).astype(np.int64))


def spmm(heads: jax.Array, tails: jax.Array, weights: jax.Array, x: jax.Array, num_nodes: int) -> jax.Array:
    """``out[h] = sum over edges (h, t) of weight * x[t]``: the sparse matrix with these entries times ``x``."""
    return jax.ops.segment_sum(weights[:, None] * x[tails], heads, num_segments=num_nodes, indices_are_sorted=True)


def adaptive_weights(heads: jax.Array, tails: jax.Array, view: jax.Array, num_nodes: int) -> jax.Array:
    """DCCF's learned adjacency: each edge weighted by ``(cos(view[h], view[t]) + 1) / 2``, rows
    normalised to sum to 1."""
    unit = l2_normalize(view)
    alpha = (jnp.sum(unit[heads] * unit[tails], -1) + 1.0) / 2.0
    total = jax.ops.segment_sum(alpha, heads, num_segments=num_nodes, indices_are_sorted=True)
    return alpha / jnp.maximum(total[heads], 1e-12)


def intent_messages(x: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Each row's mixture of the intent prototypes ``[D, K]`` by its softmax affinity to them."""
    return jax.nn.softmax(x @ prototypes, axis=-1) @ prototypes.T


def info_nce(a: jax.Array, b: jax.Array, keep: jax.Array, temperature: float) -> jax.Array:
    """InfoNCE of unit rows: row i of ``a`` against every kept row of ``b`` (positive: row i), the
    mean over kept rows ``i`` (``keep``: a row's first occurrence, so each id counts once)."""
    a, b = l2_normalize(a), l2_normalize(b)
    logits = (a @ b.T) / temperature
    logits = jnp.where(keep[None, :], logits, NEG_INF)
    per_row = jax.nn.logsumexp(logits, -1) - jnp.sum(a * b, -1) / temperature
    return jnp.sum(jnp.where(keep, per_row, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


def first_occurrence(ids: jax.Array) -> jax.Array:
    """Boolean ``[B]``: the first row of each distinct id (static shapes, unlike ``jnp.unique``)."""
    order = jnp.argsort(ids, stable=True)
    ordered = ids[order]
    first_sorted = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    return jnp.zeros(ids.shape, bool).at[order].set(first_sorted)


class DCCFRecommender(TrainableRecommender):
    """DCCF behind the recommender contract; ``item_embeddings`` is the final (propagated) item table."""

    def __init__(self, model_config: ml_collections.ConfigDict, num_items: int, interactions: Interactions):
        check_choice("model.layer_combination", model_config.layer_combination)
        self.embed_dim = int(model_config.embed_dim)
        self.num_layers = int(model_config.num_layers)
        self.num_intents = int(model_config.num_intents)
        self.augmentation = bool(model_config.augmentation)
        self.layer_residual = bool(model_config.layer_residual)
        self.layer_combination = model_config.layer_combination
        self.contrastive_weight = float(model_config.contrastive_weight)
        self.temperature = float(model_config.contrastive_temperature)
        self.embedding_reg = float(model_config.embedding_reg)
        self.intent_reg = float(model_config.intent_reg)
        self.exclude_history = bool(model_config.exclude_history)
        self.graph = build_graph(interactions, num_items)
        if self.graph.num_edges == 0:
            raise ValueError("DCCF: the training split has no user-item edges")
        self._heads = jnp.asarray(self.graph.heads)
        self._tails = jnp.asarray(self.graph.tails)
        self._norm = jnp.asarray(self.graph.norm)
        self._item_table = jax.jit(lambda p: self.propagate(p)[0][self.graph.num_users:])

    @property
    def num_users(self) -> int:
        return self.graph.num_users

    @property
    def num_items(self) -> int:
        return self.graph.num_items

    # ------------------------------------------------------------------ model

    def init(self, rng: jax.Array, batch: dict) -> dict:
        del batch
        keys = jax.random.split(rng, 4)
        glorot = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")  # Xavier normal
        params = {"user_embed": glorot(keys[0], (self.num_users, self.embed_dim)),
                  "item_embed": glorot(keys[1], (self.num_items, self.embed_dim))}
        if self.num_intents:
            params["user_intents"] = glorot(keys[2], (self.embed_dim, self.num_intents))
            params["item_intents"] = glorot(keys[3], (self.embed_dim, self.num_intents))
        return params

    def propagate(self, params: dict) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Final node vectors ``[U + I, D]`` and each layer's views (``graph``, and with intents and
        augmentation ``intent``, ``graph_aug``, ``intent_aug``), all float32."""
        params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
        n, users = self.graph.num_nodes, self.num_users
        heads, tails = self._heads, self._tails
        layers = [jnp.concatenate([params["user_embed"], params["item_embed"]])]
        views = []
        for _ in range(self.num_layers):
            x = layers[-1]
            view = {"graph": spmm(heads, tails, self._norm, x, n)}
            if self.num_intents:
                view["intent"] = jnp.concatenate([intent_messages(x[:users], params["user_intents"]),
                                                  intent_messages(x[users:], params["item_intents"])])
            if self.augmentation:
                for name in list(view):
                    view[name + "_aug"] = spmm(heads, tails, adaptive_weights(heads, tails, view[name], n), x, n)
            out = functools.reduce(jnp.add, view.values())
            layers.append(out + x if self.layer_residual else out)
            views.append(view)
        stacked = jnp.stack(layers)
        final = stacked.sum(0) if self.layer_combination == "sum" else stacked.mean(0)
        return final, views

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=None) -> tuple[jax.Array, dict]:
        del step
        final, views = self.propagate(params)
        users, positives = batch["user"], batch["target"]
        negatives = jax.random.randint(rng, positives.shape, 0, self.num_items)
        u = final[users]
        pos = jnp.sum(u * final[self.num_users + positives], -1)
        neg = jnp.sum(u * final[self.num_users + negatives], -1)
        bpr = jnp.mean(jax.nn.softplus(neg - pos))
        ego_users, ego_items = (params[k].astype(jnp.float32) for k in ("user_embed", "item_embed"))
        reg = self.embedding_reg * (jnp.sum(ego_users[users] ** 2) + jnp.sum(ego_items[positives] ** 2)
                                    + jnp.sum(ego_items[negatives] ** 2))
        if self.num_intents:
            reg = reg + self.intent_reg * sum(jnp.sum(params[k].astype(jnp.float32) ** 2)
                                              for k in ("user_intents", "item_intents"))
        metrics = {"bpr_loss": bpr, "reg_loss": reg}
        total = bpr + reg
        if self.contrastive_weight and views and len(views[0]) > 1:
            cl = self.contrastive_loss(views, users, positives)
            total = total + self.contrastive_weight * cl
            metrics["contrastive_loss"] = cl
        return total, metrics

    def contrastive_loss(self, views: list[dict], users: jax.Array, items: jax.Array) -> jax.Array:
        """Sum over layers and over the non-graph views of InfoNCE(graph view, view), for the batch's
        distinct users and distinct positive items."""
        nodes = (users, self.num_users + items)
        keeps = (first_occurrence(users), first_occurrence(items))
        total = 0.0
        for view in views:
            for name, other in view.items():
                if name == "graph":
                    continue
                for node, keep in zip(nodes, keeps):
                    total = total + info_nce(view["graph"][node], other[node], keep, self.temperature)
        return total

    # ------------------------------------------------------------------ ranking

    def eval_params(self, params: dict) -> dict:
        final, _ = self.propagate(params)
        return {"users": final[:self.num_users], "items": final[self.num_users:]}

    def scores(self, prepared: dict, batch: dict) -> jax.Array:
        """Scores ``[B, I]`` of every item for the batch's users (``prepared``: ``eval_params``);
        with ``exclude_history`` the items of the batch's history score ``NEG_INF``."""
        scores = prepared["users"][batch["user"]] @ prepared["items"].T
        if self.exclude_history:
            rows = jnp.arange(scores.shape[0])[:, None]
            seen = jnp.where(batch["history_mask"], batch["history"], self.num_items)  # padding: dropped
            scores = scores.at[rows, seen].set(NEG_INF, mode="drop")
        return scores

    def topk(self, params: dict, batch: dict, k: int) -> jax.Array:
        return jax.lax.top_k(self.scores(params, batch), k)[1]

    def item_embeddings(self, params: dict) -> jax.Array:
        """The final item vectors ``[num_items, D]`` (ego + propagated layers)."""
        return self._item_table(params)

    def training_rows(self, rows: np.ndarray, interactions: Interactions) -> np.ndarray:
        """One row per edge of the graph: (user, position of their first training event with the item)."""
        del rows
        return build_graph(interactions, self.num_items).rows
