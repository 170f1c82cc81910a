"""The Generative Action Transformer (user-modeling design doc §4, SPEC §7): a decoder-only
transformer over a user's Q-Former profile and interleaved item and action tokens.

**Sequence.** ``[q_1..q_M, I_1, A_1, ..., I_n, A_n, X, c_1, ..., c_L]``:

- ``q``: the M Q-Former query states of the user's last engaged (positive) items — however many
  other exposures lie between them (``engaged`` in the batch) — through a projector: the "system
  prompt", the stable long-term profile; the Q-Former is frozen by default (``train.frozen``) and starts from a
  pre-training run with ``model.init_qformer_from``;
- ``I_j``: one vector per history item: the sum of its RQ-KMeans code embeddings (a freshly learned
  table per level) plus its contextualized residual embedding (below); ``A_j``: its logged action
  (``view, click, cart, buy, skip``), the outcome of showing it. Two segments: the user's last
  ``max_history`` engaged events (``model.engaged_history``, on an exposure log whose skips would
  otherwise crowd the clicks out of the window), then the last ``max_history`` events;
- ``X``: an *intent* token and ``c_1..c_L`` the next item's codes.

**Why this layout serves both factorizations of §4.3.1.** History events are ``[I, A]``: an item
and what happened when it was shown (the outcome follows the item, as in §4.3.1). The predicted
event is ``[X, I]``: the intent comes first so that retrieval can *condition* on it, and the
action head reads the item's last code so that ranking can *predict* it:

- retrieval, ``P(I | H, A = click)``: ``X`` is the target action (``click``) and the item head
  generates ``c_1..c_L`` after it (§4.3.2's ``[A, I]`` order, trie-constrained beam search with a
  KV cache of the prompt and history);
- ranking, ``P(A | H, I)``: ``X`` is ``any`` (no intent) and the action head reads the hidden
  state of ``c_L``, so the predicted action is never an input.

A training example renders its target event twice in one packed sequence that shares the prompt
and history: view A (``X`` = the target's own action, item cross-entropy on positive targets, and
the bounded ``-log(1 - π)`` term on skipped items as an option, §4.3.4) and view B (``X = any``,
action cross-entropy on every target); view B attends to the prompt, the history and itself, not
to view A.

**Contextualized residual item embeddings (§4.1).** ``E = (1 - g) E_static + g E_learn`` with
``E_static`` a projection of the item's frozen pre-trained features, ``E_learn`` a trainable
per-item table and ``g = σ(MLP([stopgrad(U_profile); E_static]))``, ``U_profile`` the mean of the
projected prompt; the gate's last layer starts at weight 0 and bias -5 (``g = 0.0067`` for every
item). Added to history items and to view B's codes (the item is known when ranking), never to
view A's codes (the item is what retrieval generates). ``model.contextual_residual=False`` leaves
``E = E_static``.

**Calibration (§4.3.5).** Training keeps every positive target and ``model.negatives_per_positive``
negatives per positive (``training_rows``), which multiplies the odds of a positive by
``α = (1 / k) / r`` against the logged ratio ``r`` of the training split; ranking reports
``P(positive)`` both raw and calibrated, ``logit - log α``.

Params: ``{"qformer", "gat"}``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.data.dataset import ACTIONS, POSITIVE_ACTIONS, Interactions, positive_events
from gr_jax.data.splits import train_event_mask
from gr_jax.decoding.beam_search import beam_search, trie_children
from gr_jax.decoding.trie import build_trie
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.models.layers.decoder import DecoderBlock, DecoderConfig, causal_mask
from gr_jax.models.layers.structs import from_config
from gr_jax.models.layers.t5 import KeyValues, RMSNorm
from gr_jax.models.recommender import ActionRanker
from gr_jax.models.two_tower import item_feature_table, with_values
from gr_jax.models.user_tower import QFormer, QFormerConfig, QFormerUserTower
from gr_jax.params import is_frozen
from gr_jax.tokenizers.sid_table import SIDTable

# Action tokens: the logged actions (their codes in ``Interactions.actions``), then control tokens.
ACTION_TOKENS = ACTIONS + ("any", "explore") + tuple(f"reserved_{i}" for i in range(6))
ANY = ACTION_TOKENS.index("any")
POSITIVE = np.array([ACTIONS.index(a) for a in POSITIVE_ACTIONS])
PROMPT, ITEM, OUTCOME, INTENT, CODE = range(5)  # token roles


@dataclasses.dataclass(frozen=True, kw_only=True)
class GATConfig(DecoderConfig):
    num_levels: int
    codebook_size: int
    num_items: int
    contextual_residual: bool = True
    gate_hidden: int = 64


class GAT(nn.Module):
    config: GATConfig

    def setup(self):
        c = self.config
        # Unit-scale tokens (as Flax's embeddings): item codes, actions, roles, the normalised static
        # feature and the prompt all enter the residual stream at the same scale.
        init = nn.initializers.normal(1.0)
        self.code_embed = self.param("code_embed", nn.with_logical_partitioning(init, (None, "vocab", "embed")),
                                     (c.num_levels, c.codebook_size, c.embed_dim))
        self.action_embed = nn.Embed(len(ACTION_TOKENS), c.embed_dim, name="action_embed")
        self.role_embed = nn.Embed(5, c.embed_dim, name="role_embed")
        self.prompt_proj = nn.Dense(c.embed_dim, name="prompt_proj")
        self.static_proj = nn.Dense(c.embed_dim, name="static_proj")
        self.static_norm = nn.LayerNorm(name="static_norm")
        if c.contextual_residual:
            self.learned_items = nn.Embed(c.num_items, c.embed_dim, embedding_init=init, name="learned_items")
            self.gate_hidden = nn.Dense(c.gate_hidden, name="gate_hidden")
            # Zero kernel, bias -5: every gate starts at sigmoid(-5) = 0.0067 (the static base first).
            self.gate_out = nn.Dense(1, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(-5.0),
                                     name="gate_out")
        self.blocks = [DecoderBlock(c) for _ in range(c.num_layers)]
        self.final_norm = RMSNorm()
        self.action_head = nn.Dense(len(ACTIONS), name="action_head")

    def prompt(self, query_states):
        """The projected Q-Former query states ``[B, M, d]`` and the user profile ``[B, d]``
        (their mean, stop-gradient: the residual gate reads it as context only)."""
        prompt = self.prompt_proj(query_states)
        return prompt + self.role_embed(jnp.asarray(PROMPT)), jax.lax.stop_gradient(prompt.mean(1))

    def contextual(self, items, features, profile):
        """Contextualized residual embeddings ``[B, N, d]`` of ``items [B, N]`` with frozen
        ``features [B, N, F]``, and the gate ``[B, N]`` (zero when the residual is off)."""
        static = self.static_norm(self.static_proj(features))
        if not self.config.contextual_residual:
            return static, jnp.zeros(items.shape, static.dtype)
        context = jnp.broadcast_to(profile[:, None], static.shape)
        hidden = nn.relu(self.gate_hidden(jnp.concatenate([context, static], -1)))
        gate = jax.nn.sigmoid(self.gate_out(hidden))
        return (1.0 - gate) * static + gate * self.learned_items(items), gate[..., 0]

    def code_tokens(self, codes):
        """Embeddings ``[..., L, d]`` of codes ``[..., L]`` (level l from table l)."""
        return self.code_embed[jnp.arange(self.config.num_levels), codes] + self.role_embed(jnp.asarray(CODE))

    def code_tokens_at(self, codes, level):
        """Embeddings ``[..., d]`` of level-``level`` codes ``[...]`` (``level`` may be traced)."""
        return jnp.take(self.code_embed, level, axis=0)[codes] + self.role_embed(jnp.asarray(CODE))

    def history_tokens(self, codes, actions, residual):
        """Interleaved ``[I_1, A_1, ...]`` tokens ``[B, 2N, d]`` of items (codes ``[B, N, L]`` and
        residual embeddings ``[B, N, d]``) and their actions ``[B, N]``."""
        codes = self.code_embed[jnp.arange(self.config.num_levels), codes].sum(-2)
        items = codes + residual + self.role_embed(jnp.asarray(ITEM))
        outcomes = self.action_embed(actions) + self.role_embed(jnp.asarray(OUTCOME))
        return jnp.stack([items, outcomes], 2).reshape(items.shape[0], -1, items.shape[-1])

    def intent_token(self, intents):
        """``[B] -> [B, 1, d]``."""
        return (self.action_embed(intents) + self.role_embed(jnp.asarray(INTENT)))[:, None]

    def __call__(self, tokens, positions, mask, train: bool = False):
        """Final hidden states ``[B, T, d]`` and each block's keys and values."""
        x, memories = tokens, []
        for block in self.blocks:
            x, memory = block(x, positions, mask, train)
            memories.append(memory)
        return self.final_norm(x), tuple(memories)

    def code_logits(self, hidden, level):
        """Logits ``[..., K]`` of the level-``level`` code (tied to that level's code embeddings)."""
        table = jnp.take(self.code_embed, level, axis=0)
        return jnp.einsum("...d,kd->...k", hidden * self.config.embed_dim ** -0.5, table)

    def action_logits(self, hidden):
        return self.action_head(hidden)

    def step(self, token, position, prefixes, prefix_mask, caches, index):
        """One decode step: hidden states ``[B, W, d]`` of ``token [B, W, d]`` and the new caches."""
        x, new = token, []
        for block, prefix, cache in zip(self.blocks, prefixes, caches):
            x, cache = block.step(x, position, prefix, prefix_mask, cache, index)
            new.append(cache)
        return self.final_norm(x), tuple(new)


class GATRecommender(ActionRanker):
    """The Generative Action Transformer behind the recommender contract (module docstring).

    ``sid_table``: static RQ-KMeans SIDs of the catalogue; ``features``: the features stage's item
    embeddings (``model.item_features``); ``interactions``: the dataset's sequences (their training
    split's positive share fixes the calibration); ``pretrained_qformer``: Q-Former params to start
    from; ``unroll_decoding``: unroll the beam search's depth loop (only to count FLOPs); ``frozen``:
    ``train.frozen``.
    """

    float_tables = ("features",)

    def __init__(self, model_config: ml_collections.ConfigDict, sid_table: SIDTable, features,
                 interactions: Interactions, pretrained_qformer: dict | None = None, unroll_decoding: bool = False,
                 frozen: tuple[str, ...] = ()):
        self.config = model_config
        self.features = jnp.asarray(item_feature_table(model_config, features))
        self.codes = jnp.asarray(sid_table.codes, jnp.int32)
        codebook_size = max(sid_table.codebook_sizes)
        self.trie = build_trie(sid_table.codes, codebook_size)
        self.children = jnp.asarray(self.trie.children)
        self.leaf_items = jnp.asarray(self.trie.sid_items)
        self.qformer = QFormer(from_config(QFormerConfig, model_config))
        self.module = GAT(from_config(GATConfig, model_config.decoder, num_levels=sid_table.num_levels,
                                      codebook_size=codebook_size, num_items=sid_table.num_items,
                                      contextual_residual=model_config.contextual_residual,
                                      gate_hidden=model_config.gate_hidden))
        self.pretrained_qformer = pretrained_qformer
        # A frozen Q-Former (train.frozen) gets no update, so its backward pass is skipped too.
        self.qformer_frozen = is_frozen("qformer/queries", frozen)
        self.beam_size = model_config.beam_size
        self.exclude_history = bool(model_config.exclude_history)
        self.engaged_history = bool(model_config.engaged_history)
        self.unroll_decoding = unroll_decoding  # only to count FLOPs (see beam_search)
        self.target_action = ACTIONS.index(model_config.target_action)
        self.negatives_per_positive = int(model_config.negatives_per_positive)
        self.negative_item_weight = float(model_config.negative_item_weight)
        self.log_odds_shift = self.calibration_shift(interactions)

    def calibration_shift(self, interactions: Interactions) -> float:
        """``log α``: how much training's negative subsampling raised the log-odds of a positive
        against the training split's logged ratio (0 when every negative is kept)."""
        if self.negatives_per_positive <= 0:
            return 0.0
        train = train_event_mask(interactions)
        positives = positive_events(interactions.actions, len(interactions.items))[train]
        logged = positives.sum() / max((~positives).sum(), 1)
        return float(np.log((1.0 / self.negatives_per_positive) / max(logged, 1e-12)))

    # ------------------------------------------------------------------ inputs

    def _actions(self, batch, key: str, shape):
        """Logged actions of the batch, or all clicks for data without actions (LC-Rec)."""
        return batch[key] if key in batch else jnp.full(shape, ACTIONS.index("click"), jnp.int32)

    def engaged(self, batch) -> tuple[jax.Array, jax.Array]:
        """The user's recent engaged items ``[B, N]`` and mask: the batch's window of positive events
        (``engaged``, when the data marks them) or the positive part of the history."""
        if "engaged" in batch:
            return batch["engaged"], batch["engaged_mask"]
        actions = self._actions(batch, "history_actions", batch["history"].shape)
        return batch["history"], batch["history_mask"] & jnp.isin(actions, POSITIVE)

    def query_states(self, params, batch, train_rng=None):
        """Q-Former states ``[B, M, D]`` of the user's engaged items."""
        items, mask = self.engaged(batch)
        states = self.qformer.apply({"params": params["qformer"]}, self.features[items], mask, None,
                                    train_rng is not None, rngs=None if train_rng is None else {"dropout": train_rng})
        return jax.lax.stop_gradient(states) if self.qformer_frozen else states

    def segments(self, batch) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
        """The history segments (items, mask, actions) of the sequence, oldest first: the engaged
        window (with ``model.engaged_history`` and data that marks engagement), then the recent events."""
        out = []
        if self.engaged_history and "engaged" in batch:
            out.append((batch["engaged"], batch["engaged_mask"],
                        self._actions(batch, "engaged_actions", batch["engaged"].shape)))
        out.append((batch["history"], batch["history_mask"], self._actions(batch, "history_actions",
                                                                           batch["history"].shape)))
        return out

    def prefix(self, params, batch, rng=None, with_gate: bool = False):
        """Tokens ``[B, M + 2N, d]`` and validity of the prompt and history segments, the profile
        ``[B, d]`` (and with ``with_gate`` the mean residual gate of the real history items)."""
        variables = {"params": params["gat"]}
        prompt, profile = self.module.apply(variables, self.query_states(params, batch, rng), method=GAT.prompt)
        tokens, valid, gates = [prompt], [jnp.ones(prompt.shape[:2], bool)], []
        for items, mask, actions in self.segments(batch):
            residual, gate = self.module.apply(variables, items, self.features[items], profile, method=GAT.contextual)
            tokens.append(self.module.apply(variables, self.codes[items], actions, residual,
                                            method=GAT.history_tokens))
            valid.append(jnp.repeat(mask, 2, axis=1))
            gates.append((gate * mask).sum() / jnp.maximum(mask.sum(), 1))
        tokens, valid = jnp.concatenate(tokens, 1), jnp.concatenate(valid, 1)
        return (tokens, valid, profile, gates[-1]) if with_gate else (tokens, valid, profile)

    def _target_view(self, params, batch, profile, intents, with_residual: bool):
        """The predicted event's ``[X, c_1..c_L]`` tokens ``[B, L + 1, d]``."""
        variables = {"params": params["gat"]}
        codes = self.module.apply(variables, self.codes[batch["target"]], method=GAT.code_tokens)
        if with_residual:
            target = batch["target"][:, None]
            residual, _ = self.module.apply(variables, target, self.features[target], profile,
                                            method=GAT.contextual)
            codes = codes + residual
        intent = self.module.apply(variables, intents, method=GAT.intent_token)
        return jnp.concatenate([intent, codes], 1)

    # ------------------------------------------------------------------ contract

    def init(self, rng, batch):
        q_rng, g_rng = jax.random.split(rng)
        items, mask = self.engaged(batch)
        # The Q-Former with its reconstruction decoder, the parameter tree a pre-training run saves.
        qformer = QFormerUserTower(self.qformer).init(q_rng, {"history_features": self.features[items],
                                                               "history_mask": mask,
                                                               "target_features": self.features[batch["target"]]})
        if self.pretrained_qformer is not None:
            qformer = with_values(qformer, self.pretrained_qformer)
        # Trace every method once so that every parameter exists.
        return {"qformer": qformer, "gat": self.module.init(g_rng, method=self._init_all,
                                                            batch=batch, qformer=nn.meta.unbox(qformer))["params"]}

    def _init_all(self, module: GAT, batch, qformer):
        items, mask = self.engaged(batch)
        states = self.qformer.apply({"params": qformer}, self.features[items], mask)
        prompt, profile = module.prompt(states)
        residual, _ = module.contextual(batch["history"], self.features[batch["history"]], profile)
        history = module.history_tokens(self.codes[batch["history"]], jnp.ones_like(batch["history"]), residual)
        codes = module.code_tokens(self.codes[batch["target"]])
        intent = module.intent_token(jnp.full(batch["target"].shape, ANY))
        tokens = jnp.concatenate([prompt, history, intent, codes], 1)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2])
        hidden, _ = module(tokens, positions, causal_mask(jnp.ones(tokens.shape[:2], bool)))
        return module.code_logits(hidden[:, -1], 0), module.action_logits(hidden[:, -1])

    def training_rows(self, rows: np.ndarray, interactions: Interactions) -> np.ndarray:
        """Every positive target and ``negatives_per_positive`` negatives per positive (a seeded
        subset; every negative when 0)."""
        if self.negatives_per_positive <= 0:
            return rows
        positive = positive_events(interactions.actions, len(interactions.items))[
            interactions.offsets[rows[:, 0]] + rows[:, 1]]
        negatives = np.flatnonzero(~positive)
        keep = min(len(negatives), self.negatives_per_positive * int(positive.sum()))
        chosen = np.random.default_rng(self.config.negative_sample_seed).choice(negatives, keep, replace=False)
        return rows[np.sort(np.concatenate([np.flatnonzero(positive), chosen]))]

    def loss(self, params, batch, rng, step=None):
        del step
        q_rng, dropout_rng = jax.random.split(rng)
        prefix, valid, profile, gate = self.prefix(params, batch, q_rng, with_gate=True)
        target_actions = self._actions(batch, "target_action", batch["target"].shape)
        positive = jnp.isin(target_actions, POSITIVE)
        intent_a = jnp.where(positive, target_actions, self.target_action)
        view_a = self._target_view(params, batch, profile, intent_a, with_residual=False)
        view_b = self._target_view(params, batch, profile, jnp.full(target_actions.shape, ANY), with_residual=True)
        tokens, positions, mask = packed_views(prefix, valid, view_a, view_b)
        hidden, _ = self.module.apply({"params": params["gat"]}, tokens, positions, mask, True,
                                      rngs={"dropout": dropout_rng})
        levels = self.codes.shape[1]
        p = prefix.shape[1]
        item_hidden = hidden[:, p:p + levels]  # X, c_1 .. c_{L-1} of view A
        code_logits = jnp.stack([self.module.apply({"params": params["gat"]}, item_hidden[:, l], l,
                                                   method=GAT.code_logits) for l in range(levels)], 1)
        target_codes = self.codes[batch["target"]]
        log_probs = jax.nn.log_softmax(code_logits.astype(jnp.float32), -1)
        sequence = jnp.take_along_axis(log_probs, target_codes[..., None], -1)[..., 0].sum(-1)  # log π(I)
        weight = positive.astype(jnp.float32)
        item_loss = -(sequence * weight).sum() / jnp.maximum(weight.sum(), 1.0)
        action_logits = self.module.apply({"params": params["gat"]}, hidden[:, -1], method=GAT.action_logits)
        action_log_probs = jax.nn.log_softmax(action_logits.astype(jnp.float32), -1)
        action_loss = -jnp.take_along_axis(action_log_probs, target_actions[:, None], -1).mean()
        loss = item_loss + action_loss
        metrics = {"item_loss": item_loss, "action_loss": action_loss, "positive_share": weight.mean(),
                   "gate_mean": gate}
        if self.negative_item_weight > 0:  # bounded push-down of skipped items: -log(1 - π(I | H, click))
            negative = 1.0 - weight
            unlikely = -(jnp.log1p(-jnp.exp(jnp.minimum(sequence, -1e-6))) * negative).sum()
            unlikely = unlikely / jnp.maximum(negative.sum(), 1.0)
            loss = loss + self.negative_item_weight * unlikely
            metrics["negative_item_loss"] = unlikely
        return loss, metrics

    def search(self, params, batch, beam_size: int, intents=None):
        """Beam search over the trie of SIDs after the intent (``target_action`` by default)."""
        variables = {"params": params["gat"]}
        prefix, valid, _ = self.prefix(params, batch)
        batch_size, length = prefix.shape[:2]
        positions = jnp.broadcast_to(jnp.arange(length), (batch_size, length))
        _, memories = self.module.apply(variables, prefix, positions, causal_mask(valid))
        intents = jnp.full((batch_size,), self.target_action) if intents is None else intents
        intent = self.module.apply(variables, intents, method=GAT.intent_token)[:, 0]  # [B, d]
        c = self.module.config
        levels = self.codes.shape[1]
        shape = (batch_size, beam_size, levels, c.kv_heads, c.head_dim)
        caches = tuple(KeyValues(jnp.zeros(shape, prefix.dtype), jnp.zeros(shape, prefix.dtype)) for _ in memories)

        def step(caches, previous, level):
            codes = self.module.apply(variables, jnp.maximum(previous, 0), method=GAT.code_tokens_at,
                                      level=jnp.maximum(level - 1, 0))
            token = jnp.where(level == 0, jnp.broadcast_to(intent[:, None], codes.shape), codes)
            hidden, caches = self.module.apply(variables, token, jnp.full((batch_size,), length + level), memories,
                                               valid, caches, level, method=GAT.step)
            logits = self.module.apply(variables, hidden, level, method=GAT.code_logits)
            return jax.nn.log_softmax(logits.astype(jnp.float32), -1), caches

        return beam_search(step, caches, trie_children(self.children), levels, batch_size, beam_size,
                           unroll=self.unroll_decoding)

    def topk(self, params, batch, k):
        sids, _ = self.search(params, batch, max(self.beam_size, k)).results()
        if not self.exclude_history:
            return expand_sid_ranking(sids, self.leaf_items, k)
        items = expand_sid_ranking(sids, self.leaf_items, sids.shape[1] * self.leaf_items.shape[1])
        history, engaged = self.engaged(batch)
        seen = ((items[:, :, None] == history[:, None, :]) & engaged[:, None, :]).any(-1)
        order = jnp.argsort(seen | (items < 0), axis=1, stable=True)[:, :k]  # unseen items first, rank kept
        ranked = jnp.take_along_axis(items, order, 1)
        return jnp.where(jnp.take_along_axis(seen, order, 1), -1, ranked)

    def action_log_probs(self, params, batch):
        """``log P(A | H, I)`` ``[B, num_actions]`` of the batch's target items (ranking mode)."""
        prefix, valid, profile = self.prefix(params, batch)
        view = self._target_view(params, batch, profile, jnp.full(batch["target"].shape, ANY), with_residual=True)
        tokens = jnp.concatenate([prefix, view], 1)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2])
        mask = causal_mask(jnp.concatenate([valid, jnp.ones(view.shape[:2], bool)], 1))
        hidden, _ = self.module.apply({"params": params["gat"]}, tokens, positions, mask)
        logits = self.module.apply({"params": params["gat"]}, hidden[:, -1], method=GAT.action_logits)
        return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

    def positive_probability(self, params, batch) -> tuple[jax.Array, jax.Array]:
        """(raw, calibrated) ``P(positive action | H, I)`` ``[B]``: the mass of click, cart and buy,
        calibrated by ``logit - log α``."""
        log_probs = self.action_log_probs(params, batch)
        positive = jax.nn.logsumexp(log_probs[:, POSITIVE], -1)
        negative = jnp.log1p(-jnp.minimum(jnp.exp(positive), 1.0 - 1e-7))
        logit = positive - negative
        return jax.nn.sigmoid(logit), jax.nn.sigmoid(logit - self.log_odds_shift)


def packed_views(prefix, valid, view_a, view_b):
    """Tokens, RoPE positions and attention mask of ``[prefix, view A, view B]``: both views sit
    at the same positions after the prefix and attend to it and to themselves, not to each other."""
    batch, p = prefix.shape[:2]
    v = view_a.shape[1]
    tokens = jnp.concatenate([prefix, view_a, view_b], 1)
    positions = jnp.concatenate([jnp.arange(p + v), p + jnp.arange(v)])
    is_view_b = jnp.arange(p + 2 * v) >= p + v
    is_view_a = (jnp.arange(p + 2 * v) >= p) & ~is_view_b
    order_ok = positions[None, :] <= positions[:, None]  # key position <= query position
    same_view = ~((is_view_a[:, None] & is_view_b[None, :]) | (is_view_b[:, None] & is_view_a[None, :]))
    keys = jnp.concatenate([valid, jnp.ones((batch, 2 * v), bool)], 1)
    mask = (order_ok & same_view)[None] & keys[:, None, :]
    return tokens, jnp.broadcast_to(positions, (batch, p + 2 * v)), mask
