"""CRBR: Gumbel-routed residual beam retrieval from a Q-Former user's query states.

A user's query states ``Q [B, M, D]`` (``user_tower.QFormer``) are routed through L layers of
codebooks ``C_l [M_l, E]`` (E: the item-vector dimension); each layer picks a code and adds it
to a running state ``v``. The final state, L2-normalised, is a query into the item index
(``retrieval.exact`` / ``retrieval.scann_index``). At inference the W best routing paths give W
queries per user, whose index results are merged per item by max score
(``retrieval.multi_query.retrieve``).

- Base ``v_0``: attention pooling of Q by a learned query (zeros at init: the mean of Q), through
  a learned ``D -> E`` map. A per-user base, so the codes only have to encode the offsets
  between a user's interests, not the whole query.
- Layer l: ``ctx = attention-pool(Q; query p_l + v_{l-1} A_l)``: which of the M query states a
  layer reads depends on the path so far, so beams that diverge can follow different interests;
  ``h = MLP([ctx; v_{l-1}])`` (GELU, E out) and logits ``z_l = h C_lᵀ [B, M_l]``.
- Training: ``π_l = gumbel_softmax(z_l, τ)`` (straight-through: one-hot forward, soft
  gradient), ``v_l = v_{l-1} + π_l C_l``; τ follows ``gumbel_temperature(step)``.
- Query ``q = v_L / ‖v_L‖``.
- Inference (``route_beams``): beam search over paths by ``Σ_l log softmax(z_l)`` (no noise) on
  the shared core (``decoding.beam_search``, unconstrained but for the codebook sizes), one
  jitted ``lax.scan`` over layers; width 1 is greedy routing. Per user and layer it costs
  ``O(W·(E·D + M·D + (D + 2E)·mlp + max M·E))``, then W index queries.

Codebooks of different sizes are padded to the largest with logits ``NEG_INF`` (probability
exactly 0), so one scan body serves every layer.

Losses (pure functions, ``crbr_loss`` sums them): InfoNCE of q against the positive item (user
→ item, in-batch negatives, a negative that is the user's own target masked out); alignment
``Σ_l ‖v_l − î⁺‖²`` with ``î⁺`` the L2-normalised positive (the direction q must end on, at the
scale of a unit query; ``alignment_layers="last"`` aligns v_L only); load balance
``Σ_l Σ_j π̄_lj log π̄_lj``, ``π̄_l`` the batch mean of the noise-free ``softmax(z_l)`` (the
distribution beam search ranks by): minus the entropy of code use, lowest (``−Σ_l log M_l``)
when every code is used equally.

Logical axes: ``batch``, ``embed``, ``mlp``, ``codebook``.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.config_schema import check_choice
from gr_jax.decoding.beam_search import beam_search, free_children
from gr_jax.models.two_tower import info_nce_with_negatives
from gr_jax.ops import NEG_INF, l2_normalize, softmax

# fan-in scaling per layer of a kernel stacked on a leading layer axis
layer_dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))


def gumbel_temperature(step, initial: float = 1.0, minimum: float = 0.1, rate: float = 1e-4) -> jax.Array:
    """``τ(step) = max(minimum, initial · exp(−rate · step))``: non-increasing, clipped at ``minimum``."""
    if not 0.0 < minimum <= initial or rate < 0.0:
        raise ValueError(f"need 0 < minimum={minimum} <= initial={initial} and rate={rate} >= 0")
    return jnp.maximum(minimum, initial * jnp.exp(-rate * jnp.asarray(step, jnp.float32)))


def gumbel_softmax(rng: jax.Array, logits: jax.Array, temperature, hard: bool) -> jax.Array:
    """``softmax((logits + g) / τ)`` over the last axis, g ~ Gumbel(0, 1).

    ``hard``: straight-through, the forward value is exactly the one-hot of the argmax and the
    gradient is the soft sample's.
    """
    soft = softmax((logits + jax.random.gumbel(rng, logits.shape, logits.dtype)) / temperature)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, -1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + (soft - jax.lax.stop_gradient(soft))  # soft - soft is exactly 0


def _pool(query_states: jax.Array, pool_queries: jax.Array) -> jax.Array:
    """Attention pooling of ``Q [B, M, D]`` by queries ``[B, W, D]`` -> ``[B, W, D]``."""
    logits = jnp.einsum("bwd,bmd->bwm", pool_queries, query_states) / math.sqrt(query_states.shape[-1])
    return jnp.einsum("bwm,bmd->bwd", softmax(logits), query_states)


def _log_probs(w: dict, query_states: jax.Array, v: jax.Array, layer) -> jax.Array:
    """``log softmax(z_l)`` ``[B, W, max M]`` of states ``v [B, W, E]`` at ``layer``; padded codes ~NEG_INF."""
    context = _pool(query_states, w["pool_query"][layer] + v @ w["pool_proj"][layer])
    h = jnp.concatenate([context, v], -1) @ w["hidden_kernel"][layer] + w["hidden_bias"][layer]
    h = nn.with_logical_constraint(nn.gelu(h), ("batch", None, "mlp"))
    logits = jnp.einsum("bwe,ke->bwk", h @ w["out_kernel"][layer], w["codebooks"][layer])
    return jax.nn.log_softmax(jnp.where(w["valid"][layer], logits.astype(jnp.float32), NEG_INF), -1)


class CRBR(nn.Module):
    """Training: ``__call__(query_states [B, M, D], rng, temperature, hard)``; inference:
    ``beam_search(query_states, beam_size)`` (jitted: ``route_beams``)."""

    codebook_sizes: tuple[int, ...] = (64, 64, 64)  # M_l per routing layer; L = len
    embed_dim: int = 64  # D of the query states
    item_dim: int = 64  # E of the item vectors (codes, states and queries)
    mlp_dim: int = 256

    def setup(self):
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes={self.codebook_sizes}; expected one positive size per layer")
        layers, d, e = len(self.codebook_sizes), self.embed_dim, self.item_dim

        def param(name, init, axes, shape):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape)

        zeros = nn.initializers.zeros
        self.base_query = param("base_query", zeros, ("embed",), (d,))
        self.base_proj = param("base_proj", nn.initializers.lecun_normal(), ("embed", None), (d, e))
        self.pool_query = param("pool_query", zeros, (None, "embed"), (layers, d))
        self.pool_proj = param("pool_proj", zeros, (None, None, "embed"), (layers, e, d))
        self.hidden_kernel = param("hidden_kernel", layer_dense_init, (None, "embed", "mlp"),
                                   (layers, d + e, self.mlp_dim))
        self.hidden_bias = param("hidden_bias", zeros, (None, "mlp"), (layers, self.mlp_dim))
        self.out_kernel = param("out_kernel", layer_dense_init, (None, "mlp", "embed"), (layers, self.mlp_dim, e))
        # Code norms ~ 1/sqrt(L): a path's L codes sum to about a unit vector, the items' scale.
        code_init = nn.initializers.normal((layers * e) ** -0.5)
        self.codebooks = [param(f"codebook_{l}", code_init, ("codebook", "embed"), (size, e))
                          for l, size in enumerate(self.codebook_sizes)]

    def _check(self, query_states: jax.Array) -> None:
        if query_states.ndim != 3 or query_states.shape[-1] != self.embed_dim:
            raise ValueError(f"query_states must be [batch, queries, embed_dim={self.embed_dim}]; "
                             f"got {tuple(query_states.shape)}")

    def _weights(self, query_states: jax.Array) -> dict:
        """All parameters as arrays (codebooks padded to ``[L, max M, E]`` with a ``valid`` mask), so
        that the layer scans close over arrays, not modules; checks ``query_states``."""
        self._check(query_states)
        largest = max(self.codebook_sizes)
        return dict(pool_query=self.pool_query, pool_proj=self.pool_proj, hidden_kernel=self.hidden_kernel,
                    hidden_bias=self.hidden_bias, out_kernel=self.out_kernel,
                    codebooks=jnp.stack([jnp.pad(c, ((0, largest - c.shape[0]), (0, 0))) for c in self.codebooks]),
                    valid=jnp.arange(largest)[None] < jnp.asarray(self.codebook_sizes)[:, None])

    def base(self, query_states: jax.Array) -> jax.Array:
        """``v_0 [B, E]``."""
        self._check(query_states)
        pooled = _pool(query_states, jnp.broadcast_to(self.base_query, (query_states.shape[0], 1, self.embed_dim)))
        return nn.with_logical_constraint(pooled[:, 0] @ self.base_proj, ("batch", "embed"))

    def log_probs(self, query_states: jax.Array, v: jax.Array, layer: int) -> jax.Array:
        """Routing log-probabilities ``[B, W, max M]`` of states ``v [B, W, E]`` at ``layer``
        (padded codes ~NEG_INF)."""
        return _log_probs(self._weights(query_states), query_states, v, layer)

    def __call__(self, query_states: jax.Array, rng: jax.Array, temperature, hard: bool = True) -> dict:
        """Gumbel-routed forward pass: ``query [B, E]`` (unit norm), ``states`` v_1 .. v_L ``[B, L, E]``,
        ``probs`` noise-free ``softmax(z_l)`` ``[B, L, max M]`` (0 on padded codes) and the selected
        ``codes [B, L]`` (argmax of each sample)."""
        w = self._weights(query_states)
        num_layers = len(self.codebook_sizes)

        def layer_step(v, inputs):
            layer, key = inputs
            log_probs = _log_probs(w, query_states, v[:, None], layer)[:, 0]
            selection = gumbel_softmax(key, log_probs, temperature, hard)  # = on the logits (shift)
            v = v + selection.astype(v.dtype) @ w["codebooks"][layer]
            return v, (v, jnp.exp(log_probs), jnp.argmax(selection, -1).astype(jnp.int32))

        v, (states, probs, codes) = jax.lax.scan(
            layer_step, self.base(query_states), (jnp.arange(num_layers), jax.random.split(rng, num_layers)))
        return {"query": l2_normalize(v), "states": jnp.swapaxes(states, 0, 1),
                "probs": jnp.swapaxes(probs, 0, 1), "codes": codes.T}

    def beam_search(self, query_states: jax.Array, beam_size: int):
        """The ``beam_size`` best routing paths by ``Σ_l log softmax(z_l)``, best first: queries
        ``[B, W, E]`` (unit norm), path log-probabilities ``[B, W]`` and codes ``[B, W, L]`` int32."""
        num_paths = math.prod(self.codebook_sizes)
        if not 1 <= beam_size <= num_paths:
            raise ValueError(f"beam_size={beam_size} must be in [1, {num_paths}] (the number of routing paths)")
        w = self._weights(query_states)
        batch, num_layers = query_states.shape[0], len(self.codebook_sizes)

        def step(v, previous, layer):
            """Adds the code chosen at the previous layer to each beam's state, then routes it."""
            chosen = w["codebooks"][jnp.maximum(layer - 1, 0)][jnp.maximum(previous, 0)]
            v = jnp.where(layer == 0, v, v + chosen)
            return _log_probs(w, query_states, v, layer), v

        # With W <= Π M_l every beam is live after the last layer (layer l has min(W, Π_{j<=l} M_j)
        # live paths), so no query comes from a dead beam.
        v = jnp.broadcast_to(self.base(query_states)[:, None], (batch, beam_size, self.item_dim))
        state = beam_search(step, v, free_children(self.codebook_sizes), num_layers, batch, beam_size)
        v = state.cache + w["codebooks"][num_layers - 1][state.tokens[..., -1]]
        return l2_normalize(v), state.scores, state.tokens


@functools.partial(jax.jit, static_argnames=("module", "beam_size"))
def route_beams(module: CRBR, params: dict, query_states: jax.Array, beam_size: int):
    """Jitted ``CRBR.beam_search``: (queries ``[B, W, E]``, log-probabilities ``[B, W]``, codes ``[B, W, L]``)."""
    return module.apply({"params": params}, query_states, beam_size, method=CRBR.beam_search)


def alignment_loss(states: jax.Array, positives: jax.Array, layers: str = "every") -> jax.Array:
    """``Σ_l ‖v_l − î⁺‖²`` over states ``[B, L, E]``, ``î⁺`` the L2-normalised positive ``[B, E]``; batch
    mean. ``layers="last"`` aligns only the final state v_L (the partial states are left free)."""
    check_choice("model.alignment_layers", layers)
    states = states if layers == "every" else states[:, -1:]
    return jnp.mean(jnp.sum((states - l2_normalize(positives)[:, None]) ** 2, (1, 2)))


def load_balance_loss(probs: jax.Array) -> jax.Array:
    """``Σ_l Σ_j π̄_lj log π̄_lj`` of routing distributions ``[B, L, M]`` (zeros allowed, e.g. padded
    codes); minimal, ``−Σ_l log M_l``, when every layer's batch-mean use is uniform."""
    mean = probs.mean(0)
    return jnp.sum(mean * jnp.log(jnp.where(mean > 0, mean, 1.0)))  # 0 log 0 = 0, with a finite gradient


def crbr_loss(outputs: dict, positives: jax.Array, targets: jax.Array, temperature: float = 0.07,
              alignment_weight: float = 0.1, balance_weight: float = 0.01,
              alignment_layers: str = "every") -> tuple[jax.Array, dict]:
    """InfoNCE + α · alignment + β · load balance of ``CRBR.__call__`` outputs, positives ``[B, E]``
    (L2-normalised here) and their item ids ``targets [B]`` (untuned default weights).

    InfoNCE: ``two_tower.info_nce_with_negatives`` of the queries against the positives with
    in-batch negatives only; another row's positive that is the row's own target is masked out."""
    no_negatives = positives[:0]
    nce = info_nce_with_negatives(outputs["query"], l2_normalize(positives), no_negatives, targets, targets[:0],
                                  temperature)
    alignment = alignment_loss(outputs["states"], positives, alignment_layers)
    balance = load_balance_loss(outputs["probs"])
    total = nce + alignment_weight * alignment + balance_weight * balance
    return total, {"info_nce_loss": nce, "alignment_loss": alignment, "load_balance_loss": balance}
