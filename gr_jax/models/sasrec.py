"""SASRec (Kang & McAuley, 2018) and DuoRec (Qiu et al., 2022): causal self-attention over item ids.

The user representation is the output at the most recent history position; item scores
are its dot products with the (tied) item embedding table. Losses: full-softmax
cross-entropy (default), sampled softmax over uniform negatives, or BCE over
``num_negatives`` uniform negatives (the original paper used one). DuoRec adds a contrastive
term between two views of a sequence: another dropout pass (``unsupervised``) or a different
training sequence with the same target (``supervised``, DuoRec's default), with same-target
examples removed from the negatives. The item table is the collaborative embedding later stages use; the user
vector is the context vector (Pctx).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gr_jax.config_schema import check_choice
from gr_jax.models.layers.structs import from_config
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.ops import NEG_INF


def _attention(query, key, value, bias=None, mask=None, broadcast_dropout=True, dropout_rng=None, dropout_rate=0.0,
               deterministic=False, dtype=None, precision=None):
    """``nn.dot_product_attention`` with its softmax in float32 and its weights back in the query's
    dtype, so bfloat16 compute keeps both attention matmuls in bfloat16 (float32: the same values)."""
    del dtype
    weights = nn.dot_product_attention_weights(query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate,
                                               deterministic, query.dtype, precision, force_fp32_for_softmax=True)
    return jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value, precision=precision)


class SelfAttentionBlock(nn.Module):
    """Pre-norm causal self-attention + GELU feed-forward, each with dropout and a residual."""

    num_heads: int
    mlp_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, attention_mask, train: bool):
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = nn.LayerNorm()(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout,
                                            deterministic=not train, attention_fn=_attention)(y, y, mask=attention_mask)
        x = x + drop(y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(self.mlp_dim)(y)
        y = nn.Dense(x.shape[-1])(drop(nn.gelu(y)))
        return x + drop(y)


class SASRec(nn.Module):
    """Sequence encoder; ``__call__`` returns per-position states ``[B, L, D]``."""

    num_items: int
    max_len: int
    embed_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    mlp_dim: int = 256
    dropout: float = 0.2

    def setup(self):
        self.item_embed = nn.Embed(self.num_items, self.embed_dim,
                                   embedding_init=nn.initializers.normal(stddev=0.02))
        self.pos_embed = nn.Embed(self.max_len, self.embed_dim, embedding_init=nn.initializers.normal(stddev=0.02))
        self.blocks = [SelfAttentionBlock(self.num_heads, self.mlp_dim, self.dropout) for _ in range(self.num_blocks)]
        self.input_dropout = nn.Dropout(self.dropout)
        self.final_norm = nn.LayerNorm()

    def __call__(self, history, history_mask, train: bool = False):
        length = history.shape[1]
        x = self.item_embed(history) * self.embed_dim ** 0.5
        x = x + self.pos_embed(jnp.arange(length))[None]
        x = self.input_dropout(x, deterministic=not train) * history_mask[..., None]
        causal = jnp.tril(jnp.ones((length, length), bool))
        attention_mask = causal[None, None] & history_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attention_mask, train) * history_mask[..., None]
        return self.final_norm(x)

    def user_vector(self, history, history_mask, train: bool = False):
        """State at the newest history position (histories are left-padded)."""
        return self(history, history_mask, train)[:, -1]

    def item_table(self):
        return self.item_embed.embedding


def loss_fn(user: jax.Array, items: jax.Array, target: jax.Array, rng: jax.Array,
            kind: str, num_negatives: int) -> jax.Array:
    """Mean next-item loss of user vectors ``[B, D]`` against the item table ``[N, D]``."""
    check_choice("model.loss", kind)
    if kind == "ce":
        logits = (user @ items.T).astype(jnp.float32)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[:, None], -1)[:, 0])
    negatives = jax.random.randint(rng, (user.shape[0], num_negatives), 0, items.shape[0])
    pos = jnp.sum(user * items[target], -1).astype(jnp.float32)
    neg = jnp.einsum("bd,bkd->bk", user, items[negatives]).astype(jnp.float32)
    neg = jnp.where(negatives == target[:, None], NEG_INF, neg)  # a sampled positive is not a negative
    if kind == "sampled_softmax":
        logits = jnp.concatenate([pos[:, None], neg], -1)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - pos)
    neg_loss = jnp.where(negatives == target[:, None], 0.0, jax.nn.softplus(neg))  # bce
    return jnp.mean(jax.nn.softplus(-pos) + neg_loss.sum(-1))


def contrastive_loss(a: jax.Array, b: jax.Array, targets: jax.Array, temperature: float) -> jax.Array:
    """InfoNCE over 2B views: row i of ``a`` and of ``b`` are positives of each other; every other
    view is a negative unless it has the same target (a false negative, masked out)."""
    z = jnp.concatenate([a, b]) / temperature ** 0.5
    t = jnp.concatenate([targets, targets])
    n = a.shape[0]
    logits = (z @ z.T).astype(jnp.float32)
    index = jnp.arange(2 * n)
    positive = (index + n) % (2 * n)
    excluded = (t[:, None] == t[None, :]) & (index[None, :] != positive[:, None])  # self and false negatives
    logits = jnp.where(excluded, NEG_INF, logits)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[index, positive])


class SASRecRecommender(TrainableRecommender):
    """SASRec (or DuoRec, with ``model.contrastive``); its item table is the collaborative embedding."""

    def __init__(self, model_config: ml_collections.ConfigDict, num_items: int, max_len: int):
        self.module = from_config(SASRec, model_config, num_items=num_items, max_len=max_len)
        self.loss_kind = model_config.loss
        self.num_negatives = model_config.num_negatives
        self.contrastive = model_config.contrastive
        self.contrastive_weight = model_config.contrastive_weight
        self.contrastive_temperature = model_config.contrastive_temperature
        check_choice("model.contrastive", self.contrastive)
        self.needs_partner = self.contrastive == "supervised"

    def init(self, rng: jax.Array, batch: dict) -> dict:
        return self.module.init(rng, batch["history"], batch["history_mask"])["params"]

    def _user(self, params: dict, history, mask, rng: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, history, mask, True, method=SASRec.user_vector,
                                 rngs={"dropout": rng})

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=None) -> tuple[jax.Array, dict]:
        del step
        dropout_rng, negative_rng, view_rng = jax.random.split(rng, 3)
        user = self._user(params, batch["history"], batch["history_mask"], dropout_rng)
        items = params["item_embed"]["embedding"]
        rec_loss = loss_fn(user, items, batch["target"], negative_rng, self.loss_kind, self.num_negatives)
        if self.contrastive == "none":
            return rec_loss, {}
        view = self._user(params, batch["history"], batch["history_mask"], view_rng)
        if self.contrastive == "supervised":
            other = self._user(params, batch["partner_history"], batch["partner_history_mask"], dropout_rng)
        else:
            other = user
        cl_loss = contrastive_loss(view, other, batch["target"], self.contrastive_temperature)
        return rec_loss + self.contrastive_weight * cl_loss, {"rec_loss": rec_loss, "contrastive_loss": cl_loss}

    def scores(self, params: dict, batch: dict) -> jax.Array:
        """Scores ``[B, N]`` of every item, in float32 (bfloat16 scores tie across a large catalogue)."""
        user = self.module.apply({"params": params}, batch["history"], batch["history_mask"],
                                 method=SASRec.user_vector)
        return user.astype(jnp.float32) @ params["item_embed"]["embedding"].T.astype(jnp.float32)

    def item_embeddings(self, params: dict) -> jax.Array:
        """The item table ``[num_items, D]``: the collaborative item embedding."""
        return params["item_embed"]["embedding"]

    def topk(self, params: dict, batch: dict, k: int) -> jax.Array:
        return jax.lax.top_k(self.scores(params, batch), k)[1]
