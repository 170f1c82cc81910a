"""TIGER (Rajput et al., 2023): a T5-style encoder-decoder that generates the next item's SID.

Encoder input: a hashed user token followed by the history, either one token per code
(``item_level_history=False``, the paper's layout) or one vector per item (the sum of its
code embeddings). The decoder starts from BOS and predicts code l at position l over that
level's codebook; output logits are tied to the code-token embeddings. Evaluation is
trie-constrained beam search (``gr_jax.decoding``).

``TigerRecommender`` is also the recommender of the systems built on TIGER's model (PRISM,
Pctx): one ``init``/``loss``/``topk`` path with four hooks, ``history_sids`` (the SID rows of a
batch's history; Pctx's are per event), ``inputs`` (module inputs of a batch; PRISM adds item
features), ``example`` (inputs and target codes of a training batch; Pctx augments SIDs there)
and ``objective`` (the loss of the module's outputs; PRISM adds ATS, SSA and the MoE balance
term).

Token ids: 0 PAD, 1 BOS, 2 .. 2+U-1 user buckets, then ``code_offset + l*K + c``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gr_jax.config_schema import check_choice
from gr_jax.decoding.beam_search import BeamState, beam_search, trie_children
from gr_jax.decoding.trie import TrieTables, build_trie, leaf_items
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.models.layers.dropout import Dropout
from gr_jax.models.layers.structs import from_config
from gr_jax.models.layers.t5 import DecoderLayer, EncoderLayer, KeyValues, RelativeBias, RMSNorm, T5Config, dense_init
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.ops import contrastive_nll, l2_normalize
from gr_jax.tokenizers.sid_table import SIDTable

PAD, BOS, USER_OFFSET = 0, 1, 2


def hash_user(user: jax.Array, num_buckets: int) -> jax.Array:
    """A fixed multiplicative hash of the user id into ``num_buckets`` token ids."""
    mixed = (user.astype(jnp.uint32) * jnp.uint32(2654435761)) >> jnp.uint32(7)
    return USER_OFFSET + (mixed % jnp.uint32(num_buckets)).astype(jnp.int32)


class Tiger(nn.Module):
    config: T5Config

    @property
    def code_offset(self) -> int:
        return USER_OFFSET + self.config.num_user_buckets

    def setup(self):
        c = self.config
        vocab = self.code_offset + c.num_levels * c.codebook_size
        vocab = -(-vocab // c.vocab_multiple) * c.vocab_multiple  # padding rows are never read
        self.embed = nn.Embed(vocab, c.embed_dim, name="token_embed",
                              embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                          ("vocab", "embed")))
        self.encoder_layers = [EncoderLayer(c) for _ in range(c.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
        self.encoder_bias = RelativeBias(c.num_heads, bidirectional=True)
        self.decoder_bias = RelativeBias(c.num_heads, bidirectional=False)
        self.encoder_norm, self.decoder_norm = RMSNorm(), RMSNorm()
        self.drop = Dropout(c.dropout, c.dropout_impl)
        if c.item_id_input or c.dense_ids:
            self.item_embed = nn.Embed(c.num_items, c.embed_dim, name="item_embed",
                                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                                   ("vocab", "embed")))
        if c.dense_head:
            self.dense_query = nn.Dense(c.embed_dim, name="dense_query",
                                        kernel_init=nn.with_logical_partitioning(dense_init, ("embed", None)))
        if c.dense_text:
            self.dense_text = nn.Dense(c.embed_dim, name="dense_text",
                                       kernel_init=nn.with_logical_partitioning(dense_init, (None, "embed")))

    def code_tokens(self, codes: jax.Array) -> jax.Array:
        """Token ids of ``codes [..., L]``."""
        return self.code_offset + jnp.arange(self.config.num_levels) * self.config.codebook_size + codes

    def history_token_embeddings(self, history_codes, history_mask, history_features=None, train: bool = False):
        """Embedding ``[B, H, L, d]`` of every history code (PAD for padded items).

        The hook where subclasses mix item features into the encoder input (PRISM's DSI);
        ``history_features`` is whatever their recommender passes (TIGER ignores it).
        """
        del history_features, train
        return self.embed(jnp.where(history_mask[..., None], self.code_tokens(history_codes), PAD))

    def encode(self, history_codes, history_mask, user, train: bool = False, history_features=None,
               history_items=None):
        """Encoder states ``[B, T, d]`` and mask ``[B, T]`` for histories of SID codes ``[B, H, L]``
        (and their item ids ``[B, H]`` with ``item_id_input``: each item's ID embedding is added to
        its vector, or to each of its code tokens)."""
        batch = history_codes.shape[0]
        user_tokens = hash_user(user, self.config.num_user_buckets)[:, None]
        codes = self.history_token_embeddings(history_codes, history_mask, history_features, train)
        if self.config.item_id_input:
            ids = self.item_embed(jnp.maximum(history_items, 0)) * history_mask[..., None]
            codes = codes + (ids[:, :, None] / self.config.num_levels if self.config.item_level_history
                             else ids[:, :, None])
        if self.config.item_level_history:
            history = codes.sum(-2) * history_mask[..., None]
        else:
            history = codes.reshape(batch, -1, codes.shape[-1])
            history_mask = jnp.repeat(history_mask, self.config.num_levels, axis=1)
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
        levels = self.config.num_levels
        positions = jnp.arange(levels)
        bias = self.decoder_bias(positions, positions)
        causal = jnp.tril(jnp.ones((levels, levels), bool))[None, None]
        for layer in self.decoder_layers:
            x = layer(x, bias, causal, layer.memory(encoded), mask, train)
        return self.drop(self.decoder_norm(x), deterministic=not train)

    def code_table(self):
        """The code-token embeddings ``[L, K, d]`` that output logits are tied to."""
        c = self.config
        codes = self.embed.embedding[self.code_offset:self.code_offset + c.num_levels * c.codebook_size]
        return codes.reshape(c.num_levels, c.codebook_size, -1)

    def code_logits(self, states):
        """Logits ``[B, L, K]`` of decoder states over each level's codes (tied to the code embeddings)."""
        return jnp.einsum("bld,lkd->blk", states * self.config.embed_dim ** -0.5, self.code_table())

    def decode(self, encoded, mask, target_codes, train: bool = False):
        """Teacher-forced logits ``[B, L, K]`` for target SIDs ``[B, L]``."""
        return self.code_logits(self.decode_states(encoded, mask, target_codes, train))

    def auxiliary_outputs(self, states, train: bool = False):
        """Training outputs besides the logits, from the final decoder states (PRISM's SSA predictions)."""
        del states, train

    def item_vectors(self, items: dict, ids=None):
        """The dense head's vectors ``[N, d]`` of the catalogue's ``items`` (``codes [N, L]``, ``text [N, F]``),
        or ``[C, d]`` of the items ``ids [C]`` only, as ``config.dense_item`` picks: summed code embeddings
        plus an ID embedding (items that share codes share most of their vector, the ID part tells them
        apart), and/or the projected text embedding (LIGER's item side: an item's vector needs no
        interactions of its own)."""
        c = self.config
        rows = (lambda table: table) if ids is None else (lambda table: table[ids])
        vectors = 0.0
        if c.dense_ids:
            vectors = self.embed(self.code_tokens(rows(items["codes"]))).sum(-2) + rows(self.item_embed.embedding)
        if c.dense_text:
            vectors = vectors + self.dense_text(rows(items["text"]))
        return vectors

    def dense_logits(self, states, items: dict, targets=None):
        """Next-item logits ``[B, N]`` from the decoder's BOS state (the state that predicts the first code):
        ``q·v / sqrt(d)``, or with ``dense_loss='infonce'`` cosines over ``dense_temperature``. ``targets [C]``:
        only those items' columns ``[B, C]``."""
        c = self.config
        query, vectors = self.dense_query(states[:, 0]), self.item_vectors(items, targets)
        if c.dense_loss == "infonce":
            return l2_normalize(query) @ l2_normalize(vectors).T / c.dense_temperature
        return query @ vectors.T * c.embed_dim ** -0.5

    def dense_scores(self, encoded, mask, items: dict):
        """Dense next-item log-probabilities ``[B, N]`` of encoded histories (float32)."""
        bos_only = jnp.zeros((encoded.shape[0], self.config.num_levels), jnp.int32)  # position 0 sees BOS only
        logits = self.dense_logits(self.decode_states(encoded, mask, bos_only), items)
        return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

    def training_outputs(self, history_codes, history_mask, user, target_codes, train: bool = False,
                         history_features=None, history_items=None, dense_items=None, dense_targets=None):
        """(logits ``[B, L, K]``, ``auxiliary_outputs``, dense logits ``[B, N]`` or None) of a
        teacher-forced batch; the dense logits need the catalogue's ``dense_items`` (``item_vectors``);
        with ``dense_targets [C]`` they cover only those items (``[B, C]``)."""
        encoded, mask = self.encode(history_codes, history_mask, user, train, history_features, history_items)
        states = self.decode_states(encoded, mask, target_codes, train)
        dense = self.dense_logits(states, dense_items, dense_targets) if self.config.dense_head else None
        return self.code_logits(states), self.auxiliary_outputs(states, train), dense

    def init_decoding(self, encoded, mask, beam_size: int):
        """Per-layer cross-attention memories (shared by the beams) and empty self-attention caches."""
        c = self.config
        memories = tuple(layer.memory(encoded) for layer in self.decoder_layers)
        shape = (encoded.shape[0], beam_size, c.num_levels, c.num_heads, c.head_dim)
        caches = tuple(KeyValues(jnp.zeros(shape, encoded.dtype), jnp.zeros(shape, encoded.dtype))
                       for _ in self.decoder_layers)
        return memories, caches

    def decode_step(self, memories, mask, caches, previous_codes, level):
        """Log-probs ``[B, W, K]`` of level ``level``'s code given the previous code (-1 = BOS)."""
        previous_token = self.code_offset + (level - 1) * self.config.codebook_size + previous_codes
        x = self.embed(jnp.where(previous_codes < 0, BOS, previous_token))
        positions = jnp.arange(self.config.num_levels)
        bias = jax.lax.dynamic_index_in_dim(self.decoder_bias(positions, positions), level, axis=2, keepdims=False)
        bias = bias[:, None]  # [1, 1, H, T] against step logits [B, W, H, T]
        new_caches = []
        for layer, memory, cache in zip(self.decoder_layers, memories, caches):
            x, cache = layer.step(x, cache, level, bias, memory, mask)
            new_caches.append(cache)
        h = self.decoder_norm(x) * self.config.embed_dim ** -0.5
        logits = jnp.einsum("bwd,kd->bwk", h, jnp.take(self.code_table(), level, axis=0))
        return jax.nn.log_softmax(logits.astype(jnp.float32), -1), tuple(new_caches)

    def __call__(self, history_codes, history_mask, user, target_codes, train: bool = False, history_features=None,
                 history_items=None):
        encoded, mask = self.encode(history_codes, history_mask, user, train, history_features, history_items)
        return self.decode(encoded, mask, target_codes, train)


def token_nll(logits, target):
    """Per-level negative log-likelihood ``[B, L]`` of ``target [B, L]`` under ``logits [B, L, K]`` (float32)."""
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[..., 0]


def reserve_dense_slots(ranked: jax.Array, dense_items: jax.Array, slots: int) -> jax.Array:
    """``ranked [B, k]`` with its last ``slots`` places given to the best of ``dense_items [B, W]`` (best
    first, ``W >= k``) that its first ``k - slots`` do not hold: a share of the list that the dense head
    fills alone, as LIGER keeps for items the beam does not reach."""
    kept = ranked[:, :ranked.shape[1] - slots]
    taken = (dense_items[:, :, None] == kept[:, None, :]).any(-1)
    order = jnp.argsort(taken, axis=1, stable=True)[:, :slots]  # untaken first, in the dense head's order
    return jnp.concatenate([kept, jnp.take_along_axis(dense_items, order, 1)], 1)


def popularity_rerank(items: jax.Array, scores: jax.Array, log_counts: jax.Array, penalty: float,
                      k: int) -> jax.Array:
    """The ``k`` best of candidate ``items [B, C]`` (-1 = none, -1 padded) by ``scores [B, C]`` minus
    ``penalty · log_counts[item]``: a popularity correction at ranking time (the inference-side
    counterpart of the logQ correction), which lifts items the decoder rarely saw as targets."""
    adjusted = jnp.where(items >= 0, scores - penalty * log_counts[jnp.maximum(items, 0)], -jnp.inf)
    value, top = jax.lax.top_k(adjusted, k)
    return jnp.where(value > -jnp.inf, jnp.take_along_axis(items, top, 1), -1)


def hybrid_fields(model_config: ml_collections.ConfigDict, num_items: int) -> dict:
    """The ``T5Config`` fields of the ID+SID inputs and the dense head, from ``model.item_id_input``,
    ``model.dense_weight`` and ``model.retrieval``."""
    check_choice("model.retrieval", model_config.get("retrieval", "beam"))
    dense = model_config.get("dense_weight", 0.0) > 0
    if model_config.get("retrieval", "beam") != "beam" and not dense:
        raise ValueError(f"model.retrieval='{model_config.retrieval}' ranks with the dense head: set "
                         f"model.dense_weight > 0 (e.g. 1.0) to train it, or model.retrieval='beam'")
    item_ids = model_config.get("item_id_input", False)
    return {"num_items": num_items if item_ids or dense else 0, "item_id_input": item_ids, "dense_head": dense}


class TigerRecommender(TrainableRecommender):
    """TIGER over a ``SIDTable``: trained with teacher forcing, ranks by trie-constrained beam search.

    ``module``: the ``Tiger`` to train (default: built from ``model_config`` and the table's sizes;
    PRISM passes its own). ``unroll_decoding``: unroll the beam search's depth loop (only to count
    FLOPs, see ``beam_search``). ``decode_temperatures`` ``[L, max_prefixes]``: per-prefix decoding
    temperatures (PRISM's ATS), None for plain decoding. ``item_text [N, F]``: the items' text
    embeddings, for a dense head whose item vectors hold them (``model.dense_item``).

    Hybrid retrieval (LIGER, Yang et al. 2024, in this codebase's form): ``model.item_id_input`` adds
    item-ID embeddings to the SID inputs; ``model.dense_weight > 0`` trains a dense next-item head
    (full-softmax cross-entropy over the catalogue, weighted into the loss); ``model.retrieval``
    ranks by the beam (``beam``), by the dense head over all items (``dense``), or (``hybrid``) takes
    the beam's items and the dense head's top ``beam_size`` and ranks their union by
    ``log p_dense(item) + model.hybrid_gen_weight · log p_gen(SID)``, each candidate's SID scored
    exactly by teacher forcing; ``model.hybrid_dense_slots`` > 0 gives the last that many places of
    the ranking to the dense head's best items not ranked above them (``reserve_dense_slots``).

    ``model.popularity_penalty`` β > 0 ranks every retrieval's items by their score minus
    β · log(1 + training count) (``popularity_rerank``; the beam's by its SID log-probability, over
    its ``beam_size`` best items); ``item_counts [N]`` are those counts (the registry passes them).
    """

    float_tables = ("item_text",)

    def __init__(self, model_config: ml_collections.ConfigDict, sid_table: SIDTable, module: Tiger | None = None,
                 unroll_decoding: bool = False, decode_temperatures: jax.Array | None = None, item_text=None,
                 item_counts=None):
        codebook_size = max(sid_table.codebook_sizes)
        self.module = module or Tiger(from_config(T5Config, model_config, num_levels=sid_table.num_levels,
                                                  codebook_size=codebook_size,
                                                  **hybrid_fields(model_config, sid_table.num_items)))
        self.dense_weight = model_config.get("dense_weight", 0.0)
        self.retrieval = model_config.get("retrieval", "beam")
        self.hybrid_gen_weight = model_config.get("hybrid_gen_weight", 1.0)
        self.hybrid_dense_slots = model_config.get("hybrid_dense_slots", 0)
        if self.hybrid_dense_slots and self.retrieval != "hybrid":
            raise ValueError(f"model.hybrid_dense_slots={self.hybrid_dense_slots} applies to model.retrieval=hybrid "
                             f"only (it is {self.retrieval!r}): set it to 0 or use hybrid retrieval")
        self.popularity_penalty = model_config.get("popularity_penalty", 0.0)
        self.item_log_counts = None
        if self.popularity_penalty:
            if item_counts is None or len(item_counts) != sid_table.num_items:
                raise ValueError(f"model.popularity_penalty={self.popularity_penalty} needs the training count of "
                                 f"each of the {sid_table.num_items} items (item_counts); set it to 0 to rank "
                                 f"without it")
            self.item_log_counts = jnp.log1p(jnp.asarray(item_counts, jnp.float32))
        self.codes = jnp.asarray(sid_table.codes, jnp.int32)
        self.trie = build_trie(sid_table.codes, codebook_size, model_config.get("trie", "auto"))
        self.children = TrieTables.of(self.trie)
        self.leaf_items = jnp.asarray(leaf_items(self.trie, sid_table.sid_item))
        self.beam_size = model_config.beam_size
        self.unroll_decoding = unroll_decoding
        self.decode_temperatures = decode_temperatures
        self.item_text = None
        if self.module.config.dense_text:
            if item_text is None:
                raise ValueError(f"model.dense_item='{model_config.dense_item}' needs the items' text embeddings: "
                                 f"PRISM passes its features (configs/prism.py, config.features.text); for TIGER "
                                 f"set model.dense_item='codes_id'")
            if len(item_text) != sid_table.num_items:
                raise ValueError(f"{len(item_text)} item text embeddings for {sid_table.num_items} items")
            self.item_text = jnp.asarray(item_text, jnp.float32)

    def history_sids(self, batch: dict) -> jax.Array:
        """SID rows ``[B, H]`` of the batch's history (a static table's row is the item)."""
        return batch["history"]

    def inputs(self, batch: dict) -> dict:
        """Keyword inputs of ``Tiger.encode`` for a batch."""
        inputs = {"history_codes": self.codes[self.history_sids(batch)], "history_mask": batch["history_mask"],
                  "user": batch["user"]}
        if self.module.config.item_id_input:
            inputs["history_items"] = batch["history"]
        return inputs

    def example(self, batch: dict, rng: jax.Array) -> tuple[dict, jax.Array, jax.Array]:
        """(module inputs, target codes ``[B, L]``, dropout rng) of a training batch."""
        return self.inputs(batch), self.codes[batch["target"]], rng

    def dense_items(self) -> dict | None:
        """The catalogue for the dense head's item vectors (``Tiger.item_vectors``): each item's SID
        ``codes [N, L]`` (a static table's rows are the items) and its ``text [N, F]``; None without the head."""
        if not self.module.config.dense_head:
            return None
        return {"codes": self.codes} | ({} if self.item_text is None else {"text": self.item_text})

    def init(self, rng: jax.Array, batch: dict):
        inputs, target, _ = self.example(batch, rng)
        return self.module.init(rng, **inputs, target_codes=target, dense_items=self.dense_items(),
                                method=Tiger.training_outputs)["params"]

    def objective(self, logits, auxiliary, intermediates: dict, target, batch: dict) -> tuple[jax.Array, dict]:
        """(loss, metrics) of the teacher-forced outputs: the summed code cross-entropy."""
        del auxiliary, intermediates, batch
        return token_nll(logits, target).sum(-1).mean(), {}

    def loss(self, params, batch: dict, rng: jax.Array, step=None):
        del step
        inputs, target, dropout_rng = self.example(batch, rng)
        in_batch = self.module.config.dense_loss == "infonce"
        (logits, auxiliary, dense), state = self.module.apply(
            {"params": params}, **inputs, target_codes=target, dense_items=self.dense_items(),
            dense_targets=batch["target"] if in_batch else None, train=True,
            rngs={"dropout": dropout_rng}, mutable=["intermediates"], method=Tiger.training_outputs)
        loss, metrics = self.objective(logits, auxiliary, state.get("intermediates", {}), target, batch)
        if dense is not None:
            dense_ce = (contrastive_nll(dense, batch["target"], batch["target"]) if in_batch
                        else token_nll(dense[:, None], batch["target"][:, None]).mean())
            loss, metrics = loss + self.dense_weight * dense_ce, metrics | {"dense_ce": dense_ce}
        return loss, metrics

    def sid_log_probs(self, logits: jax.Array, codes: jax.Array) -> jax.Array:
        """Log-probability ``[...]`` of the SIDs ``codes [..., L]`` under their teacher-forced logits
        ``[..., L, K]``, with the decoding temperatures when they are set, as the beam search scores them."""
        logits = logits.astype(jnp.float32)
        if self.decode_temperatures is not None:
            prefix, taus = jnp.zeros(codes.shape[:-1], jnp.int32), []
            for level in range(codes.shape[-1]):
                taus.append(self.decode_temperatures[level][prefix])
                prefix = jnp.maximum(self.children.child(level, prefix, codes[..., level]), 0)
            logits = jax.nn.log_softmax(logits, -1) / jnp.stack(taus, -1)[..., None]
        log_probs = jax.nn.log_softmax(logits, -1)
        return jnp.take_along_axis(log_probs, codes[..., None], -1)[..., 0].sum(-1)

    def sequence_log_probs(self, params, batch: dict, codes: jax.Array) -> jax.Array:
        """Teacher-forced log-probability of the SIDs ``codes [B, L]`` (exhaustive-scoring reference)."""
        return self.sid_log_probs(self.module.apply({"params": params}, **self.inputs(batch), target_codes=codes),
                                  codes)

    def candidate_log_probs(self, params, encoded, mask, codes: jax.Array) -> jax.Array:
        """Log-probability ``[B, C]`` of each user's candidate SIDs ``codes [B, C, L]``, teacher-forced
        through the decoding step (the cross-attention memory computed once per user, not per candidate)."""
        variables = {"params": params}
        memories, caches = self.module.apply(variables, encoded, mask, codes.shape[1], method=Tiger.init_decoding)
        step_logits = []
        for level in range(codes.shape[-1]):
            previous = codes[..., level - 1] if level else jnp.full(codes.shape[:2], -1, jnp.int32)
            log_probs, caches = self.module.apply(variables, memories, mask, caches, previous, level,
                                                  method=Tiger.decode_step)
            step_logits.append(log_probs)
        return self.sid_log_probs(jnp.stack(step_logits, -2), codes)

    def encode(self, params, inputs: dict) -> tuple[jax.Array, jax.Array]:
        """Encoder states and mask of module ``inputs``."""
        return self.module.apply({"params": params}, **inputs, method=Tiger.encode)

    def search(self, params, inputs: dict, beam_size: int, tables: TrieTables | None = None,
               encoded: tuple[jax.Array, jax.Array] | None = None) -> BeamState:
        """Trie-constrained beam search over the SID table from module ``inputs``; ``.results()`` gives
        (SID rows ``[B, W]``, scores ``[B, W]``), best first. ``tables``: the trie's tables as an
        argument (a large catalogue's, passed to the jitted function rather than closed over as a
        constant); default the model's own. ``encoded``: ``encode``'s result when the caller has it."""
        variables = {"params": params}
        encoded, mask = encoded or self.encode(params, inputs)
        memories, caches = self.module.apply(variables, encoded, mask, beam_size, method=Tiger.init_decoding)

        def step(caches, previous, level):
            return self.module.apply(variables, memories, mask, caches, previous, level, method=Tiger.decode_step)

        tables = self.children if tables is None else tables
        return beam_search(step, caches, trie_children(tables), self.trie.num_levels, encoded.shape[0],
                           beam_size, self.decode_temperatures, self.unroll_decoding)

    def beam_candidates(self, params, batch: dict, width: int) -> tuple[jax.Array, jax.Array]:
        """The beam's ``width`` best items ``[B, width]`` (-1 padded) and their SIDs' log-probabilities."""
        sids, scores = self.search(params, self.inputs(batch), width).results()
        return expand_sid_ranking(sids, self.leaf_items, width, scores)

    def topk(self, params, batch: dict, k: int) -> jax.Array:
        if self.retrieval == "beam" and self.popularity_penalty:
            items, scores = self.beam_candidates(params, batch, max(self.beam_size, k))
            return popularity_rerank(items, scores, self.item_log_counts, self.popularity_penalty, k)
        inputs = self.inputs(batch)
        if self.retrieval == "beam":
            sids, _ = self.search(params, inputs, max(self.beam_size, k)).results()
            return expand_sid_ranking(sids, self.leaf_items, k)
        encoded, mask = self.encode(params, inputs)
        dense = self.module.apply({"params": params}, encoded, mask, self.dense_items(), method=Tiger.dense_scores)
        if self.retrieval == "dense" and self.popularity_penalty:
            return jax.lax.top_k(dense - self.popularity_penalty * self.item_log_counts, k)[1]
        if self.retrieval == "dense":
            return jax.lax.top_k(dense, k)[1]
        width = max(self.beam_size, k)
        sids, _ = self.search(params, inputs, width, encoded=(encoded, mask)).results()
        beam_items = expand_sid_ranking(sids, self.leaf_items, width)
        dense_items = jax.lax.top_k(dense, width)[1]
        repeated = (dense_items[:, :, None] == beam_items[:, None, :]).any(-1)
        items = jnp.concatenate([beam_items, jnp.where(repeated, -1, dense_items)], 1)  # [B, 2W], -1: none
        generative = self.candidate_log_probs(params, encoded, mask, self.codes[jnp.maximum(items, 0)])
        score = jnp.take_along_axis(dense, jnp.maximum(items, 0), 1) + self.hybrid_gen_weight * generative
        if self.popularity_penalty:
            ranked = popularity_rerank(items, score, self.item_log_counts, self.popularity_penalty, k)
        else:
            ranked = jnp.take_along_axis(items, jax.lax.top_k(jnp.where(items >= 0, score, -jnp.inf), k)[1], 1)
        if not self.hybrid_dense_slots:
            return ranked
        if self.hybrid_dense_slots > k:
            raise ValueError(f"model.hybrid_dense_slots={self.hybrid_dense_slots} exceeds the {k} items ranked")
        return reserve_dense_slots(ranked, dense_items, self.hybrid_dense_slots)
