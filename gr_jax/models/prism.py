"""PRISM's Integrated Semantic Recommender (Fang et al., 2026): TIGER plus DSI, SSA and ATS.

Built on ``Tiger`` (same encoder-decoder, tied code logits, trie-constrained beam search);
three switchable additions, each a ``config.model`` knob (``configs/prism.py``):

- **DSI** (dynamic semantic integration): every encoder history token of SID level ``l``
  becomes a mix of its code embedding, the item's text (content) embedding and its
  collaborative embedding, each projected by a *level-specific* projection (shared input
  LayerNorm, per-level Dense + LayerNorm). The mix is a per-token softmax gate over the three
  sources (``dsi_fusion='gate'``) or a mixture of experts (``'moe'``): a router MLP over the
  concatenated sources (noisy top-k gating in training), ``num_experts`` expert MLPs
  (3d -> d_moe -> d_moe/2 -> d_moe/4), the top-k renormalised mix projected back to d, and a
  learnable residual ``x_id + sigmoid(a) (fused - x_id)`` (``a`` starts at -2). The router is
  trained with a load-balancing loss ``E * sum_i f_i P_i + (log E - H(P)) / log E`` (``f``:
  share of top-k slots per expert, ``P``: mean router probability), weight
  ``dsi_balance_weight``. With ``item_level_history`` the L fused level tokens of an item are
  summed into its one encoder vector. DSI only touches the encoder input: the decoder's
  inputs are the target's own code prefix, whose item (and so its features) is unknown
  during beam search. A token's fusion is a function of its (item, level) alone: its noise
  and dropout are drawn per (item, level) and step, not per history slot, so the batch's
  distinct history items are fused once each (``dsi_per_item``; padding is skipped).
- **SSA** (semantic structure alignment): a predictor maps the final decoder state of level
  ``l`` plus a context from its level ``l-1`` prediction (a learned start context at level 0)
  to a vector in the tokenizer's codebook space; loss ``mean(1 - cos(pred_l, c_l[code_l]))``
  against the codebook row of the target's level-``l`` code, weight ``ssa_weight``. Only the
  levels that have codebooks take part (not a de-dup digit).
- **ATS** (adaptive temperature scaling), training only: the level-``l`` logits of a target
  are divided by ``tau = tau_min + (tau_max - tau_min) exp(-alpha K / K_ref)`` where ``K`` is
  the number of valid children of the target's length-``l`` prefix in the SID trie.

Facts from the official code (DengzhaoFang/PRISM-Rec, ``src/recommender/prism/``): DSI
on encoder tokens only, item features broadcast to each of the item's code tokens, per-token
routing, 4 experts, top-2, softmax-then-top-k with renormalised weights, noisy gating with a
zero-initialised noise projection and 0.05 input noise, the two-term balance loss with weight
0.01 and the residual alpha (``model.py``, ``moe_fusion.py``, ``config.py``); the SSA
predictor's layout and conditioning on the previous level's *prediction* (``model.py``);
``logits / tau`` per target position from the child count of the target prefix, ``tau_max``
for a childless prefix, optional mean-centring, all levels from ``start_layer`` on
(``adaptive_temperature.py``).

Deviations, following ``SPEC.md`` section 3 where it differs from the official code:

- The MoE's content/CF projections are level-specific (SPEC; the official MoE shares them and
  only its non-MoE fusion has a per-level option). ``dsi_depth_specific=False`` shares them.
- ``dsi_fusion='gate'`` is a softmax over the three sources (SPEC); the official "learned" gate
  uses independent sigmoids. Its initial bias favours the code embedding (official init).
- Expert width d_moe = 256 (SPEC; official default 512). The official per-expert "diverse"
  initialisation gains are not reproduced (plain independent inits).
- The balance statistics are taken over real history tokens only (the official code also
  counts padding).

The experts run densely (every expert on every token, the top-k kept) in an expert-major
layout; each has its own LayerNorms, as the official ``Expert``, so sparse top-k dispatch would
compute the same function (``bench/moe_dispatch.py``: not faster on CPU at these sizes).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.config_schema import check_choice
from gr_jax.decoding.trie import Trie
from gr_jax.models.layers.dropout import Dropout, hash_bits, hash_keep_mask, masked_relu, mix_keys
from gr_jax.models.layers.structs import from_config
from gr_jax.models.layers.t5 import T5Config
from gr_jax.models.tiger import Tiger, TigerRecommender, hybrid_fields, token_nll
from gr_jax.ops import l2_normalize, softmax
from gr_jax.tokenizers.sid_table import SIDTable

SOURCES = 3  # code embedding, projected text, projected CF
_xavier_half = nn.initializers.variance_scaling(0.25, "fan_avg", "uniform")  # xavier_uniform, gain 0.5


class DepthProjection(nn.Module):
    """Item features ``[..., F]`` -> one projection per SID level ``[..., L, d]``.

    A shared input LayerNorm, then per level a Dense and a LayerNorm (``num_levels=1``: one
    projection broadcast to every level).
    """

    num_levels: int
    embed_dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(name="input_norm")(x)
        init = nn.initializers.variance_scaling(0.25, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, (None, None, "embed")),
                            (self.num_levels, x.shape[-1], self.embed_dim))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed")),
                          (self.num_levels, self.embed_dim))
        y = jnp.einsum("...f,lfd->...ld", x, kernel) + bias
        return nn.LayerNorm(feature_axes=(-2, -1), name="output_norm")(y)


class GateFusion(nn.Module):
    """Per-token softmax weights over the sources ``[..., S, d]`` from an MLP of their concatenation."""

    dropout: float = 0.1
    dropout_impl: str = "hash"

    @nn.compact
    def __call__(self, sources, weight, train: bool = False, keys=None, seed=None):
        """``weight [...]``: each token's weight in the statistics; ``keys``, ``seed``: its dropout's
        row keys and seed (``Dropout``)."""
        d = sources.shape[-1]
        h = nn.relu(nn.Dense(d, kernel_init=_xavier_half, name="hidden")(sources.reshape(sources.shape[:-2] + (-1,))))
        h = Dropout(self.dropout, self.dropout_impl)(h, deterministic=not train, keys=keys, seed=seed)
        bias = lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype).at[0].set(1.0)  # favour the code
        weights = softmax(nn.Dense(sources.shape[-2], kernel_init=_xavier_half, bias_init=bias,
                                          name="logits")(h), -1)
        w = weight.astype(weights.dtype)[..., None]
        share = (weights * w).reshape(-1, weights.shape[-1]).sum(0) / jnp.maximum(w.sum(), 1.0)
        return (weights[..., None] * sources).sum(-2), {"source_share": share}


def hash_normal(seed: jax.Array, shape: tuple[int, ...], keys: jax.Array | None = None) -> jax.Array:
    """Standard normal noise from a uint32 ``seed``: Box-Muller over two hashed uniforms per element.

    The counter-based hash of ``layers.dropout`` (each element's global linear index, or its row's
    ``keys``, mixed with the seed): far cheaper to compile and run on CPU than ``jax.random.normal``'s
    Threefry.
    """
    bits = hash_bits(seed, tuple(shape) + (2,), keys)
    u1 = ((bits[..., 0] >> 8) + jnp.uint32(1)).astype(jnp.float32) * 2.0 ** -24  # (0, 1]
    u2 = (bits[..., 1] >> 8).astype(jnp.float32) * 2.0 ** -24
    return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)


def balance_loss(probs, selected, weight):
    """``E * sum_i f_i P_i + (log E - H(P)) / log E`` over the tokens, each counted ``weight`` times.

    ``probs [..., E]`` router probabilities, ``selected [..., E]`` 1 where an expert is in a
    token's top-k, ``weight [...]`` (0 for padding; a distinct item's number of history slots).
    Returns (loss, share of top-k slots per expert ``[E]``).
    """
    num_experts = probs.shape[-1]
    w = weight.astype(probs.dtype)[..., None]
    count = jnp.maximum(w.sum(), 1.0)
    f = jax.lax.stop_gradient((selected * w).reshape(-1, num_experts).sum(0)) / count
    p = (probs * w).reshape(-1, num_experts).sum(0) / count
    entropy = -(p * jnp.log(p + 1e-8)).sum()
    log_e = jnp.log(float(num_experts))
    loss = num_experts * (f * p).sum() + (log_e - entropy) / log_e
    return loss, f / jnp.maximum(f.sum(), 1e-9)


class MoEFusion(nn.Module):
    """Mixture-of-experts fusion of the sources ``[..., S, d]`` (source 0 = code embedding)."""

    num_experts: int = 4
    expert_dim: int = 256
    top_k: int = 2
    router_noise: bool = True
    input_noise: float = 0.05
    dropout: float = 0.1
    dropout_impl: str = "hash"

    def _router(self, x, train, keys, seed):
        hidden = max(x.shape[-1] // 2, 128)
        h = nn.Dense(hidden, kernel_init=_xavier_half, name="router_hidden")(x)
        h = nn.relu(nn.LayerNorm(name="router_norm")(h))
        h = Dropout(0.1, self.dropout_impl)(h, deterministic=not train, keys=keys, seed=seed)
        h = nn.relu(nn.Dense(hidden // 2, kernel_init=_xavier_half, name="router_hidden2")(h))
        return nn.Dense(self.num_experts, kernel_init=_xavier_half, name="router_logits")(h)

    def _expert_layer(self, x, width, name, first: bool):
        """One Dense per expert, expert-major: ``x [..., i]`` (first) or ``[E, ..., i]`` -> ``[E, ..., width]``.

        The experts' hidden states stay in ``[E, tokens, h]`` so each layer is a batched matmul over
        contiguous per-expert slabs; token-major ``[tokens, E, h]`` would transpose them around every
        matmul, forward and backward.
        """
        fan_in = x.shape[-1]
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,))
        kernel = self.param(f"{name}_kernel", nn.with_logical_partitioning(init, ("experts", None, None)),
                            (self.num_experts, fan_in, width))
        bias = self.param(f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("experts", None)),
                          (self.num_experts, width))
        spec = "...i,eih->e...h" if first else "e...i,eih->e...h"
        return jnp.einsum(spec, x, kernel) + bias.reshape((self.num_experts,) + (1,) * (x.ndim - 2 + first) + (width,))

    def _expert_norm(self, h, name):
        """Each expert's own LayerNorm of its hidden units (``h [E, ..., h]``; scale and bias ``[E, h]``)."""
        return nn.LayerNorm(reduction_axes=-1, feature_axes=(0, -1), name=name)(h)

    def _expert_relu_dropout(self, h, train, keys, seed):
        """``Dropout(relu=True)`` of expert-major ``h [E, ..., h]`` with the mask a token-major
        ``[..., E, h]`` array would draw (``hash``: keyed per token row, so the masks do not depend
        on the layout)."""
        if not train or self.dropout == 0.0:
            return nn.relu(h)
        if self.dropout_impl != "hash":
            return Dropout(self.dropout, self.dropout_impl)(h, deterministic=False, seed=seed, relu=True)
        if seed is None:
            seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
        keep = jnp.moveaxis(hash_keep_mask(seed, h.shape[1:-1] + (h.shape[0], h.shape[-1]), self.dropout, keys), -2, 0)
        return masked_relu(h, keep, self.dropout)

    def _noise(self, shape, dtype, keys, seed):
        if seed is None:
            seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
        if self.dropout_impl == "threefry":
            return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)
        return hash_normal(seed, shape, keys).astype(dtype)

    @nn.compact
    def __call__(self, sources, weight, train: bool = False, keys=None, seed=None):
        """``weight [...]``: each token's weight in the balance loss; ``keys``: its noise and dropout
        row keys; ``seed``: a uint32 seed of all the draws (default: the ``dropout`` RNG stream)."""
        draws = iter(range(5))

        def site():  # the seed of the next random draw
            return None if seed is None else mix_keys(jnp.uint32(next(draws)), seed)

        code = sources[..., 0, :]
        d = code.shape[-1]
        x = sources.reshape(sources.shape[:-2] + (-1,))
        routed = x
        if train and self.input_noise > 0:
            routed = routed + self.input_noise * self._noise(x.shape, x.dtype, keys, site())
        logits = self._router(routed, train, keys, site())
        noise_scale = nn.Dense(self.num_experts, kernel_init=nn.initializers.zeros, name="router_noise")(routed)
        if train and self.router_noise:
            noise = self._noise(logits.shape, logits.dtype, keys, site())
            logits = logits + noise * jax.nn.softplus(noise_scale)
        probs = softmax(logits)
        top_probs, top_index = jax.lax.top_k(probs, self.top_k)
        top_weights = top_probs / (top_probs.sum(-1, keepdims=True) + 1e-8)
        one_hot = jax.nn.one_hot(top_index, self.num_experts, dtype=probs.dtype)  # [..., k, E]
        gates = (one_hot * top_weights[..., None]).sum(-2)  # [..., E], zero outside the top-k
        h = self._expert_layer(x, self.expert_dim, "expert_in", first=True)  # [E, ..., d_moe]
        h = self._expert_relu_dropout(self._expert_norm(h, "expert_norm"), train, keys, site())
        h = self._expert_layer(h, self.expert_dim // 2, "expert_mid", first=False)
        h = self._expert_relu_dropout(h, train, keys, site())
        h = self._expert_norm(self._expert_layer(h, self.expert_dim // 4, "expert_out", first=False), "expert_out_norm")
        mixed = jnp.einsum("...e,e...h->...h", gates, h)
        fused = nn.LayerNorm(name="output_norm")(nn.Dense(d, kernel_init=_xavier_half, name="output")(mixed))
        alpha = jax.nn.sigmoid(self.param("fusion_alpha", nn.initializers.constant(-2.0), ()))
        loss, usage = balance_loss(probs, one_hot.sum(-2), weight)
        return code + alpha * (fused - code), {"balance": loss, "usage": usage, "alpha": alpha}


class CodebookPredictor(nn.Module):
    """SSA: decoder states ``[B, >=n, d]`` -> predicted codebook vectors ``[B, n, out_dim]``.

    Level ``l`` reads its decoder state and a context projected from the level ``l-1``
    prediction (a learned start context at level 0).
    """

    num_levels: int
    out_dim: int
    dropout: float = 0.1
    dropout_impl: str = "hash"

    @nn.compact
    def __call__(self, states, train: bool = False):
        d = states.shape[-1]
        start = self.param("initial_context", nn.initializers.normal(0.02), (d // 4,))
        context = jnp.broadcast_to(start, states.shape[:1] + start.shape)
        previous = nn.Dense(d // 4, name="previous_level")
        predictions = []
        for level in range(self.num_levels):
            h = jnp.concatenate([states[:, level], context], -1)
            h = nn.LayerNorm(name=f"level{level}_norm")(nn.Dense(d // 2, name=f"level{level}_hidden")(h))
            h = Dropout(self.dropout, self.dropout_impl)(h, deterministic=not train, relu=True)
            prediction = nn.Dense(self.out_dim, name=f"level{level}_out")(h)
            predictions.append(prediction)
            context = previous(prediction)
        return jnp.stack(predictions, 1)


def ssa_loss(predictions, codebooks, target_codes):
    """``mean(1 - cos)`` of ``predictions [B, n, D]`` against ``codebooks[l][target_codes[:, l]]``.

    ``codebooks [n, K, D]`` (rows past a level's size unused), ``target_codes [B, >=n]``.
    """
    n = predictions.shape[1]
    targets = codebooks[jnp.arange(n)[None, :], target_codes[:, :n]]
    return jnp.mean(1.0 - (l2_normalize(predictions) * l2_normalize(targets)).sum(-1))


def prefix_child_counts(trie: Trie, codes: np.ndarray) -> np.ndarray:
    """``[N, L]``: number of valid children of each item's length-``l`` SID prefix in the trie."""
    codes = np.asarray(codes)
    counts = trie.num_children()
    prefix = np.zeros(len(codes), np.int64)
    out = np.zeros(codes.shape, np.int64)
    for level in range(codes.shape[1]):
        out[:, level] = counts[level, prefix]
        prefix = trie.child(level, prefix, codes[:, level])
    return out


def ats_temperature(child_counts, alpha: float = 0.5, tau_min: float = 0.1, tau_max: float = 2.0,
                    k_ref: float = 50.0) -> np.ndarray:
    """``tau_min + (tau_max - tau_min) exp(-alpha K / K_ref)`` clipped to ``[tau_min, tau_max]``."""
    k = np.asarray(child_counts, np.float64)
    tau = tau_min + (tau_max - tau_min) * np.exp(-alpha * k / k_ref)
    return np.clip(np.where(k > 0, tau, tau_max), tau_min, tau_max)


def ats_table(trie: Trie, codes: np.ndarray, model: ml_collections.ConfigDict) -> np.ndarray:
    """Temperature by (level, number of valid children of the prefix) ``[L, K + 1]`` from the ATS knobs.

    Levels before ``ats_start_level`` keep 1; with ``ats_mean_center`` the table is rescaled so
    that the training temperatures of the catalogue's items average 1."""
    num_levels, codebook_size = trie.num_levels, trie.codebook_size
    table = np.tile(ats_temperature(np.arange(codebook_size + 1), model.ats_alpha, model.ats_tau_min,
                                    model.ats_tau_max, model.ats_k_ref), (num_levels, 1))
    table[:model.ats_start_level] = 1.0
    if model.ats_mean_center:
        counts = prefix_child_counts(trie, codes)
        table = table / table[np.arange(num_levels), counts].mean()
    return table.astype(np.float32)


def ats_temperatures(trie: Trie, codes: np.ndarray, model: ml_collections.ConfigDict) -> np.ndarray:
    """Per item and level training temperature ``[N, L]`` from the config's ATS knobs."""
    table = ats_table(trie, codes, model)
    return table[np.arange(codes.shape[1]), prefix_child_counts(trie, codes)]


def prefix_temperatures(trie: Trie, table: np.ndarray) -> np.ndarray:
    """Decoding temperature of every trie prefix ``[L, max_prefixes]`` from an ``ats_table``."""
    return np.take_along_axis(table, trie.num_children(), axis=1)


def distinct_buckets(slots: int, num_items: int, growth: float, smallest: int = 256) -> tuple[int, ...]:
    """Static row counts for the distinct items of ``slots`` history slots (plus a padding row):
    ``smallest * growth**i`` (rounded up to a multiple of 8) below the bound ``min(slots, num_items) + 1``,
    then the bound."""
    bound = min(slots, num_items) + 1
    sizes = []
    size = float(smallest)
    while (rows := -(-int(size) // 8) * 8) < bound:
        sizes.append(rows)
        size *= growth
    return tuple(sizes) + (bound,)


class Prism(Tiger):
    """``Tiger`` with DSI in the encoder input and an SSA codebook predictor on the decoder."""

    dsi: bool = True
    dsi_fusion: str = "moe"
    dsi_depth_specific: bool = True
    num_experts: int = 4
    expert_dim: int = 256
    top_k: int = 2
    router_noise: bool = True
    dsi_per_item: bool = True  # fuse each distinct history item of a batch once (False: every slot)
    dsi_bucket_growth: float = 2 ** 0.25  # ratio of consecutive static row counts of the per-item fusion
    ssa_levels: int = 0  # levels with an SSA target (0: SSA off)
    ssa_dim: int = 32  # codebook vector size

    def __post_init__(self):
        check_choice("model.dsi_fusion", self.dsi_fusion)
        if not self.dsi_bucket_growth > 1:
            raise ValueError(f"model.dsi_bucket_growth={self.dsi_bucket_growth}: must be > 1 (e.g. 2 ** 0.25)")
        super().__post_init__()

    def setup(self):
        super().setup()
        c = self.config
        if self.dsi:
            levels = c.num_levels if self.dsi_depth_specific else 1
            self.text_projection = DepthProjection(levels, c.embed_dim)
            self.cf_projection = DepthProjection(levels, c.embed_dim)
            if self.dsi_fusion == "moe":
                self.fusion = MoEFusion(self.num_experts, self.expert_dim, self.top_k, self.router_noise,
                                        dropout=c.dropout, dropout_impl=c.dropout_impl)
            else:
                self.fusion = GateFusion(c.dropout, c.dropout_impl)
        if self.ssa_levels:
            self.codebook_predictor = CodebookPredictor(self.ssa_levels, self.ssa_dim, c.dropout, c.dropout_impl)

    def history_token_embeddings(self, history_codes, history_mask, history_features=None, train: bool = False):
        """DSI-fused embeddings ``[B, H, L, d]`` of the history tokens (PAD's embedding for padding).

        ``history_features``: ``item [B, H]`` (the history's item ids) and the catalogue tables
        ``codes [N, L]``, ``text [N, F_t]``, ``cf [N, F_c]``. A token's fusion depends only on its
        (item, level), its noise and dropout included (keyed by item, ``fuse_items``), so with
        ``dsi_per_item`` each distinct history item of the batch is fused once and its result
        shared by all its slots; otherwise every slot is fused (the reference: same values).
        """
        codes = super().history_token_embeddings(history_codes, history_mask, history_features, train)
        if not self.dsi:
            return codes
        items, tables = history_features["item"], {k: v for k, v in history_features.items() if k != "item"}
        # One seed for the fusion's draws, taken here: RNG streams drawn inside nn.switch's branches
        # differ from branch to branch.
        seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32) if train else jnp.uint32(0)
        if self.dsi_per_item:
            fused, stats = self._fuse_distinct_items(items, history_mask, tables, train, seed)
        else:
            fused, stats = self.fuse_items(items, history_mask, tables, train, seed)
        for name, value in stats.items():
            self.sow("intermediates", f"dsi_{name}", value)
        return jnp.where(history_mask[..., None, None], fused, codes)

    def fuse_items(self, items, weight, tables: dict, train: bool, seed):
        """DSI fusion ``[..., L, d]`` of items ``[...]``, each token weighted ``weight`` in the statistics;
        ``seed``: of its noise and dropout (each draw keyed by (item, level), so per-item fusing and
        per-slot fusing draw the same)."""
        levels = self.config.num_levels
        codes = self.embed(self.code_tokens(tables["codes"][items]))
        text = jnp.broadcast_to(self.text_projection(tables["text"][items]), codes.shape)
        cf = jnp.broadcast_to(self.cf_projection(tables["cf"][items]), codes.shape)
        keys = items[..., None] * levels + jnp.arange(levels)
        weight = jnp.broadcast_to(weight[..., None], keys.shape)
        return self.fusion(jnp.stack([codes, text, cf], -2), weight, train, keys, seed)

    def _fuse_distinct_items(self, items, mask, tables: dict, train: bool, seed):
        """``fuse_items`` once per distinct valid item of ``items [B, H]``, gathered back to the slots.

        The number of distinct items is data-dependent: the fusion runs at the smallest of a few
        static row counts (``distinct_buckets``) that holds them, picked by ``nn.switch``. Each
        branch is rematerialised: a differentiated switch would otherwise return (zero-filled)
        residuals of every branch, the largest included, on every step.
        """
        num_items = tables["codes"].shape[0]
        flat = jnp.where(mask, items, num_items).reshape(-1)  # padding -> one sentinel value
        sizes = distinct_buckets(flat.size, num_items, growth=self.dsi_bucket_growth)

        def fuse_at(size):
            def run(module, flat, tables, seed):
                rows, inverse, counts = jnp.unique(flat, size=size, fill_value=num_items, return_inverse=True,
                                                   return_counts=True)
                weight = jnp.where(rows < num_items, counts, 0)
                fused, stats = module.fuse_items(jnp.minimum(rows, num_items - 1), weight, tables, train, seed)
                return fused[inverse.reshape(items.shape)], stats
            return run

        if len(sizes) == 1:
            return fuse_at(sizes[0])(self, flat, tables, seed)
        distinct = 1 + jnp.count_nonzero(jnp.diff(jnp.sort(flat)))
        bucket = jnp.searchsorted(jnp.asarray(sizes), distinct)
        return nn.switch(bucket, [nn.checkpoint(fuse_at(size)) for size in sizes], self, flat, tables, seed)

    def auxiliary_outputs(self, states, train: bool = False):
        """SSA predictions ``[B, ssa_levels, ssa_dim]``, or None without SSA."""
        return self.codebook_predictor(states, train) if self.ssa_levels else None


def ssa_codebook_table(codebooks, num_levels: int) -> np.ndarray | None:
    """The levels' codebooks stacked to ``[n, K_max, D]`` (zero rows past a level's size), or None."""
    codebooks = [np.asarray(c, np.float32) for c in (codebooks or [])][:num_levels]
    if not codebooks:
        return None
    dims = {c.shape[1] for c in codebooks}
    if len(dims) != 1:
        raise ValueError(f"SSA needs codebooks of one vector size, got sizes {sorted(dims)}")
    table = np.zeros((len(codebooks), max(len(c) for c in codebooks), dims.pop()), np.float32)
    for level, codebook in enumerate(codebooks):
        table[level, :len(codebook)] = codebook
    return table


class PrismRecommender(TigerRecommender):
    """PRISM: TIGER's recommender with the ``Prism`` module, item features for DSI, ATS temperatures
    (training, and decoding with ``model.ats_at_inference``) and the SSA and MoE balance terms.

    ``sid_table``: a static ``SIDTable`` (codes; codebooks for SSA). ``text [N, F_t]`` / ``cf [N, F_c]``:
    item content and collaborative embeddings (needed when ``model.dsi``; ``text`` also by a dense head
    over item text, ``model.dense_item``).
    """

    float_tables = ("features", "ssa_codebooks", "item_text")

    def __init__(self, model_config: ml_collections.ConfigDict, sid_table: SIDTable, text=None, cf=None,
                 unroll_decoding: bool = False, item_counts=None):
        features = {}
        if model_config.dsi:
            for name, value in (("text", text), ("cf", cf)):
                if value is None:
                    raise ValueError(f"model.dsi needs the '{name}' item embeddings: enable config.features.{name} "
                                     f"(and the features stage) or set model.dsi=False")
                if len(value) != sid_table.num_items:
                    raise ValueError(f"{len(value)} '{name}' embeddings for {sid_table.num_items} items")
                features[name] = jnp.asarray(value, jnp.float32)
        ssa_table = None
        if model_config.ssa:
            ssa_table = ssa_codebook_table(sid_table.codebooks, sid_table.num_levels)
            if ssa_table is None:
                raise ValueError("model.ssa needs the tokenizer's codebooks, and this SID table has none "
                                 "(e.g. an imported index.json); set model.ssa=False")
        t5 = from_config(T5Config, model_config, num_levels=sid_table.num_levels,
                         codebook_size=max(sid_table.codebook_sizes),
                         **hybrid_fields(model_config, sid_table.num_items))
        module = from_config(Prism, model_config, config=t5, ssa_levels=0 if ssa_table is None else ssa_table.shape[0],
                             ssa_dim=32 if ssa_table is None else ssa_table.shape[2])
        super().__init__(model_config, sid_table, module, unroll_decoding, item_text=text if t5.dense_text else None,
                         item_counts=item_counts)
        self.config = model_config
        self.features = features
        self.ssa_codebooks = None if ssa_table is None else jnp.asarray(ssa_table)
        self.temperatures = None  # [N, L] training temperature of each item's levels
        if model_config.ats:
            table = ats_table(self.trie, sid_table.codes, model_config)
            levels = np.arange(sid_table.num_levels)
            self.temperatures = jnp.asarray(table[levels, prefix_child_counts(self.trie, sid_table.codes)])
            if model_config.ats_at_inference:
                self.decode_temperatures = jnp.asarray(prefix_temperatures(self.trie, table))

    def inputs(self, batch: dict) -> dict:
        inputs = super().inputs(batch)
        if self.features:
            inputs["history_features"] = {"item": batch["history"], "codes": self.codes, **self.features}
        return inputs

    def objective(self, logits, predictions, intermediates: dict, target, batch: dict) -> tuple[jax.Array, dict]:
        """The code cross-entropy under the ATS temperatures, plus γ·SSA and the MoE balance loss."""
        cfg = self.config
        metrics = {}
        if self.temperatures is not None:  # nll_tau1: the plain CE, comparable with TIGER's loss
            metrics["nll_tau1"] = jax.lax.stop_gradient(token_nll(logits, target).sum(-1).mean())
            logits = logits / self.temperatures[batch["target"]][..., None]
        nll = token_nll(logits, target).sum(-1).mean()
        loss, metrics["nll"] = nll, nll
        if predictions is not None:
            ssa = ssa_loss(predictions, self.ssa_codebooks, target)
            loss, metrics["ssa"] = loss + cfg.ssa_weight * ssa, ssa
        if "dsi_balance" in intermediates:
            balance = intermediates["dsi_balance"][0]
            usage = intermediates["dsi_usage"][0]
            loss = loss + cfg.dsi_balance_weight * balance
            metrics |= {"moe_balance": balance, "moe_min_share": usage.min(), "moe_max_share": usage.max(),
                        "moe_alpha": intermediates["dsi_alpha"][0]}
        if "dsi_source_share" in intermediates:
            share = intermediates["dsi_source_share"][0]
            metrics |= {f"gate_{source}_share": share[i] for i, source in enumerate(("code", "text", "cf"))}
        return loss, metrics
