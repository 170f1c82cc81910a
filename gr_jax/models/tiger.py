"""TIGER (Rajput et al., 2023): a T5-style encoder-decoder that generates the next item's SID.

Encoder input: a hashed user token followed by the history, either one token per code
(``item_level_history=False``, the paper's layout) or one vector per item (the sum of its
code embeddings). The decoder starts from BOS and predicts code l at position l over that
level's codebook; output logits are tied to the code-token embeddings. Evaluation is
trie-constrained beam search (``gr_jax.decoding``).

Token ids: 0 PAD, 1 BOS, 2 .. 2+U-1 user buckets, then ``code_offset + l*K + c``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.decoding.beam_search import beam_search
from gr_jax.decoding.trie import Trie, build_trie
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.models.layers.dropout import Dropout
from gr_jax.models.layers.t5 import DecoderLayer, EncoderLayer, RelativeBias, RMSNorm

PAD, BOS, USER_OFFSET = 0, 1, 2


def hash_user(user: jax.Array, num_buckets: int) -> jax.Array:
    """A fixed multiplicative hash of the user id into ``num_buckets`` token ids."""
    mixed = (user.astype(jnp.uint32) * jnp.uint32(2654435761)) >> jnp.uint32(7)
    return USER_OFFSET + (mixed % jnp.uint32(num_buckets)).astype(jnp.int32)


class Tiger(nn.Module):
    num_levels: int
    codebook_size: int
    num_user_buckets: int = 2000
    embed_dim: int = 128
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    dropout: float = 0.1
    dropout_impl: str = "hash"  # hash (fast) | threefry (reference)
    item_level_history: bool = False

    @property
    def code_offset(self) -> int:
        return USER_OFFSET + self.num_user_buckets

    def setup(self):
        vocab = self.code_offset + self.num_levels * self.codebook_size
        self.embed = nn.Embed(vocab, self.embed_dim, name="token_embed",
                              embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                          ("vocab", "embed")))
        layer = dict(embed_dim=self.embed_dim, num_heads=self.num_heads, head_dim=self.head_dim,
                     mlp_dim=self.mlp_dim, dropout=self.dropout, dropout_impl=self.dropout_impl)
        self.encoder_layers = [EncoderLayer(**layer) for _ in range(self.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(**layer) for _ in range(self.num_decoder_layers)]
        self.encoder_bias = RelativeBias(self.num_heads, bidirectional=True)
        self.decoder_bias = RelativeBias(self.num_heads, bidirectional=False)
        self.encoder_norm, self.decoder_norm = RMSNorm(), RMSNorm()
        self.drop = Dropout(self.dropout, self.dropout_impl)

    def code_tokens(self, codes: jax.Array) -> jax.Array:
        """Token ids of ``codes [..., L]``."""
        return self.code_offset + jnp.arange(self.num_levels) * self.codebook_size + codes

    def history_token_embeddings(self, history_codes, history_mask, history_features=None, train: bool = False):
        """Embedding ``[B, H, L, d]`` of every history code (PAD for padded items).

        The hook where subclasses mix item features into the encoder input (PRISM's DSI);
        ``history_features`` is whatever their recommender passes (TIGER ignores it).
        """
        del history_features, train
        return self.embed(jnp.where(history_mask[..., None], self.code_tokens(history_codes), PAD))

    def encode(self, history_codes, history_mask, user, train: bool = False, history_features=None):
        """Encoder states ``[B, T, d]`` and mask ``[B, T]`` for histories of SID codes ``[B, H, L]``."""
        batch = history_codes.shape[0]
        user_tokens = hash_user(user, self.num_user_buckets)[:, None]
        codes = self.history_token_embeddings(history_codes, history_mask, history_features, train)
        if self.item_level_history:
            history = codes.sum(-2) * history_mask[..., None]
        else:
            history = codes.reshape(batch, -1, codes.shape[-1])
            history_mask = jnp.repeat(history_mask, self.num_levels, axis=1)
        x = jnp.concatenate([self.embed(user_tokens), history], axis=1)
        mask = jnp.concatenate([jnp.ones((batch, 1), bool), history_mask], axis=1)
        x = nn.with_logical_constraint(self.drop(x, deterministic=not train), ("batch", "seq", "embed"))
        positions = jnp.arange(x.shape[1])
        bias = self.encoder_bias(positions, positions)
        attention_mask = mask[:, None, None, :]
        for layer in self.encoder_layers:
            x = layer(x, bias, attention_mask, train)
        return self.drop(self.encoder_norm(x), deterministic=not train), mask

    def decode_states(self, encoded, mask, target_codes, train: bool = False):
        """Teacher-forced final decoder states ``[B, L, d]`` (position l predicts code l)."""
        inputs = jnp.concatenate([jnp.full(target_codes.shape[:1] + (1,), BOS),
                                  self.code_tokens(target_codes)[:, :-1]], axis=1)
        x = self.drop(self.embed(inputs), deterministic=not train)
        positions = jnp.arange(self.num_levels)
        bias = self.decoder_bias(positions, positions)
        causal = jnp.tril(jnp.ones((self.num_levels, self.num_levels), bool))[None, None]
        for layer in self.decoder_layers:
            x = layer(x, bias, causal, layer.memory(encoded), mask, train)
        return self.drop(self.decoder_norm(x), deterministic=not train)

    def code_table(self):
        """The code-token embeddings ``[L, K, d]`` that output logits are tied to."""
        return self.embed.embedding[self.code_offset:].reshape(self.num_levels, self.codebook_size, -1)

    def code_logits(self, states):
        """Logits ``[B, L, K]`` of decoder states over each level's codes (tied to the code embeddings)."""
        return jnp.einsum("bld,lkd->blk", states * self.embed_dim ** -0.5, self.code_table())

    def decode(self, encoded, mask, target_codes, train: bool = False):
        """Teacher-forced logits ``[B, L, K]`` for target SIDs ``[B, L]``."""
        return self.code_logits(self.decode_states(encoded, mask, target_codes, train))

    def init_decoding(self, encoded, mask, beam_size: int):
        """Per-layer cross-attention memory (shared by the beams) and empty self-attention caches."""
        batch = encoded.shape[0]
        memories = [layer.memory(encoded) for layer in self.decoder_layers]
        shape = (batch, beam_size, self.num_levels, self.num_heads, self.head_dim)
        caches = [(jnp.zeros(shape, encoded.dtype), jnp.zeros(shape, encoded.dtype)) for _ in self.decoder_layers]
        return memories, caches

    def decode_step(self, memories, mask, caches, previous_codes, level):
        """Log-probs ``[B, W, K]`` of level ``level``'s code given the previous code (-1 = BOS)."""
        previous_token = self.code_offset + (level - 1) * self.codebook_size + previous_codes
        x = self.embed(jnp.where(previous_codes < 0, BOS, previous_token))
        positions = jnp.arange(self.num_levels)
        bias = jax.lax.dynamic_index_in_dim(self.decoder_bias(positions, positions), level, axis=2, keepdims=False)
        bias = bias[:, None]  # [1, 1, H, T] against step logits [B, W, H, T]
        new_caches = []
        for layer, memory, cache in zip(self.decoder_layers, memories, caches):
            x, cache = layer.step(x, cache, level, bias, memory, mask)
            new_caches.append(cache)
        h = self.decoder_norm(x) * self.embed_dim ** -0.5
        logits = jnp.einsum("bwd,kd->bwk", h, jnp.take(self.code_table(), level, axis=0))
        return jax.nn.log_softmax(logits, -1), new_caches

    def __call__(self, history_codes, history_mask, user, target_codes, train: bool = False, history_features=None):
        encoded, mask = self.encode(history_codes, history_mask, user, train, history_features)
        return self.decode(encoded, mask, target_codes, train)


def module_kwargs(model: ml_collections.ConfigDict) -> dict:
    """The ``Tiger`` fields set from ``config.model`` (shared by models built on TIGER)."""
    return dict(num_user_buckets=model.num_user_buckets, embed_dim=model.embed_dim,
                num_encoder_layers=model.num_encoder_layers, num_decoder_layers=model.num_decoder_layers,
                num_heads=model.num_heads, head_dim=model.head_dim, mlp_dim=model.mlp_dim, dropout=model.dropout,
                dropout_impl=model.dropout_impl, item_level_history=model.item_level_history)


def build(model: ml_collections.ConfigDict, num_levels: int, codebook_size: int) -> Tiger:
    return Tiger(num_levels=num_levels, codebook_size=codebook_size, **module_kwargs(model))


class TigerRecommender:
    """TIGER behind the trainer's model interface, over a fixed SID table ``codes [num_items, L]``.

    Subclasses (PRISM) override ``build_module`` and ``_inputs`` (extra module inputs) and ``loss``.
    """

    trainable = True

    def __init__(self, model_config: ml_collections.ConfigDict, codes: np.ndarray, codebook_size: int):
        self.codes = jnp.asarray(codes, jnp.int32)
        self.trie: Trie = build_trie(codes, codebook_size)
        self.module = self.build_module(model_config, codes.shape[1], codebook_size)
        self.beam_size = model_config.beam_size
        self.children = jnp.asarray(self.trie.children)
        self.sid_items = jnp.asarray(self.trie.sid_items)
        self.unroll_decoding = False  # True only to count FLOPs (see beam_search)
        self.decode_temperatures = None  # [L, max_prefixes] per-prefix decoding temperatures (PRISM ATS)

    def build_module(self, model_config: ml_collections.ConfigDict, num_levels: int, codebook_size: int) -> Tiger:
        return build(model_config, num_levels, codebook_size)

    def _inputs(self, batch) -> dict:
        """Keyword inputs of ``Tiger.encode`` / ``__call__`` for a batch (besides targets and ``train``)."""
        return {"history_codes": self.codes[batch["history"]], "history_mask": batch["history_mask"],
                "user": batch["user"]}

    def init(self, rng: jax.Array, batch: dict):
        return self.module.init(rng, **self._inputs(batch), target_codes=self.codes[batch["target"]])["params"]

    @staticmethod
    def token_nll(logits, target):
        """Per-level negative log-likelihood ``[B, L]`` of ``target [B, L]`` under ``logits [B, L, K]``."""
        return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[..., 0]

    def loss(self, params, batch: dict, rng: jax.Array):
        target = self.codes[batch["target"]]
        logits = self.module.apply({"params": params}, **self._inputs(batch), target_codes=target, train=True,
                                   rngs={"dropout": rng})
        return self.token_nll(logits, target).sum(-1).mean(), {}

    def sequence_log_probs(self, params, batch: dict, codes: jax.Array) -> jax.Array:
        """Teacher-forced log-probability of the SIDs ``codes [B, L]`` (exhaustive-scoring reference),
        under the decoding temperatures when they are set, as the beam search scores them."""
        logits = self.module.apply({"params": params}, **self._inputs(batch), target_codes=codes)
        if self.decode_temperatures is not None:
            prefix, taus = jnp.zeros(codes.shape[0], jnp.int32), []
            for level in range(codes.shape[1]):
                taus.append(self.decode_temperatures[level][prefix])
                prefix = jnp.maximum(self.children[level][prefix, codes[:, level]], 0)
            logits = jax.nn.log_softmax(logits, -1) / jnp.stack(taus, 1)[..., None]
        log_probs = jax.nn.log_softmax(logits, -1)
        return jnp.take_along_axis(log_probs, codes[..., None], -1)[..., 0].sum(-1)

    def search(self, params, batch: dict, beam_size: int):
        """Beam search: (SID rows ``[B, W]``, scores ``[B, W]``), best first."""
        variables = {"params": params}
        encoded, mask = self.module.apply(variables, **self._inputs(batch), method=Tiger.encode)
        memories, caches = self.module.apply(variables, encoded, mask, beam_size, method=Tiger.init_decoding)

        def step(caches, previous, level):
            return self.module.apply(variables, memories, mask, caches, previous, level, method=Tiger.decode_step)

        return beam_search(step, caches, self.children, encoded.shape[0], beam_size, self.unroll_decoding,
                           self.decode_temperatures)

    def topk(self, params, batch: dict, k: int) -> jax.Array:
        sids, scores = self.search(params, batch, max(self.beam_size, k))
        return expand_sid_ranking(sids, self.sid_items, k)
