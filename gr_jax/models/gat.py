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

**Two-stage curriculum (§4.3.6).** Stage 1 trains the full model at a high-positive ratio (the
default, 1:1). Stage 2 (``configs/gat.py:stage2``) starts from stage 1's best params
(``model.init_from``) and shifts the ratio through ``model.curriculum`` (1:2, 1:5, 1:10: one
training phase each, ``training_phases``) with ``model.freeze_backbone``: only the contextualized
residuals and the action head train (``STAGE2_TRAINED``), so retrieval keeps what stage 1 learned;
the calibration follows the last phase's ratio.

**Steering (§4.4).** Prompt tokens between the history and the intent reshape retrieval without
retraining (``steer``): a seed item followed by the ``[SEED]`` action token (more like this),
``[EXPLORE]`` (both action-vocabulary control tokens) and a category's soft prompt (one learned
vector per category at ``model.category_level``). Training teaches all three (view A,
``training_prompt``): with probability ``model.seed_prompt_prob`` a positive target is preceded by
one of its ``model.seed_neighbours`` nearest items in the item feature table as the seed (so the
model learns to generate near the seed), with probability ``model.explore_prob`` ``[EXPLORE]``
precedes a positive target outside the categories of the user's engaged history, and with
probability ``model.category_prompt_prob`` the target's category prompt precedes a positive
target. An absent prompt token is masked and takes no position, so a model trained with them ranks
exactly as without them when none is given. ``model.steer_explore``/``model.steer_category``
steer the eval stage's lists.

**Distilled sampler (§4.3.1).** With ``model.sampler_dim > 0`` a light head (``Sampler``) reads the
hidden state of the ``[CLICK]`` intent after the history and scores every item at once; a run with
it starts from a trained model (``model.init_from``), freezes that model (the teacher) and trains
only the head, by cross-entropy against the teacher's beam distribution (the beam's items weighted
by the softmax of their ``log P(I | H, click)``). Its ``topk`` is then one forward pass and one
matrix product, no decoding loop (``steer`` still decodes with the teacher).

Params: ``{"qformer", "gat"}`` (+ ``"sampler"``).
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
from gr_jax.decoding.trie import TrieTables, build_trie
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.models.layers.decoder import DecoderBlock, DecoderConfig, causal_mask
from gr_jax.models.layers.structs import from_config
from gr_jax.models.layers.t5 import KeyValues, RMSNorm
from gr_jax.models.recommender import ActionRanker
from gr_jax.models.two_tower import item_feature_table, with_values
from gr_jax.models.user_tower import QFormer, QFormerConfig, QFormerUserTower
from gr_jax.ops import NEG_INF
from gr_jax.params import is_frozen
from gr_jax.retrieval.exact import exact_topk
from gr_jax.tokenizers.sid_table import SIDTable

# Action tokens: the logged actions (their codes in ``Interactions.actions``), then control tokens.
ACTION_TOKENS = ACTIONS + ("any", "explore", "seed") + tuple(f"reserved_{i}" for i in range(5))
ANY, EXPLORE, SEED = (ACTION_TOKENS.index(t) for t in ("any", "explore", "seed"))
POSITIVE = np.array([ACTIONS.index(a) for a in POSITIVE_ACTIONS])
PROMPT, ITEM, OUTCOME, INTENT, CODE = range(5)  # token roles
# Stage 2 of the curriculum trains these (the contextualized residuals and the action head); the
# backbone, every other parameter, is frozen by ``model.freeze_backbone``.
STAGE2_TRAINED = ("gat/learned_items", "gat/gate_hidden", "gat/gate_out", "gat/action_head")
BACKBONE = ("qformer", "gat/code_embed", "gat/action_embed", "gat/role_embed", "gat/prompt_proj", "gat/static_proj",
            "gat/static_norm", "gat/blocks_*", "gat/final_norm", "gat/category_prompts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GATConfig(DecoderConfig):
    num_levels: int
    codebook_size: int
    num_items: int
    contextual_residual: bool = True
    gate_hidden: int = 64
    num_categories: int = 0  # soft prompts (0: none)


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
        if c.num_categories:
            self.category_prompts = self.param("category_prompts", init, (c.num_categories, c.embed_dim))
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

    def category_token(self, categories):
        """Soft prompts ``[B, 1, d]`` of ``categories [B]`` (-1 reads category 0: callers mask it)."""
        return self.category_prompts[jnp.maximum(categories, 0)][:, None]

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


class Sampler(nn.Module):
    """The distilled one-shot sampler head: item logits ``[B, N]`` from the intent's hidden state
    ``[B, d]`` (a two-layer query against a learned item table)."""

    num_items: int
    dim: int

    @nn.compact
    def __call__(self, hidden):
        query = nn.Dense(self.dim, name="query")(nn.gelu(nn.Dense(self.dim, name="hidden")(hidden)))
        items = self.param("items", nn.initializers.normal(self.dim ** -0.5), (self.num_items, self.dim))
        return query @ items.T + self.param("bias", nn.initializers.zeros, (self.num_items,))


class GATRecommender(ActionRanker):
    """The Generative Action Transformer behind the recommender contract (module docstring).

    ``sid_table``: static RQ-KMeans SIDs of the catalogue; ``features``: the features stage's item
    embeddings (``model.item_features``); ``interactions``: the dataset's sequences (their training
    split's positive share fixes the calibration); ``pretrained_qformer``: Q-Former params to start
    from; ``unroll_decoding``: unroll the beam search's depth loop (only to count FLOPs); ``frozen``:
    ``train.frozen``. ``model.freeze_backbone`` freezes ``BACKBONE`` itself (``self.frozen``); with
    ``model.sampler_dim`` everything but the sampler is frozen.
    ``categories``: each item's category path (``ItemTable.categories``), for steering.
    """

    float_tables = ("features",)

    def __init__(self, model_config: ml_collections.ConfigDict, sid_table: SIDTable, features,
                 interactions: Interactions, pretrained_qformer: dict | None = None, unroll_decoding: bool = False,
                 frozen: tuple[str, ...] = (), categories: list[tuple[str, ...]] | None = None):
        self.config = model_config
        self.explore_prob = float(model_config.explore_prob)
        self.seed_prompt_prob = float(model_config.seed_prompt_prob)
        self.category_prompt_prob = float(model_config.category_prompt_prob)
        self.steer_explore, self.steer_category = bool(model_config.steer_explore), int(model_config.steer_category)
        if categories is None and (self.explore_prob > 0 or self.category_prompt_prob > 0):
            raise ValueError("model.explore_prob and model.category_prompt_prob need the items' categories")
        if self.steer_category >= 0 and self.category_prompt_prob <= 0:
            raise ValueError("model.steer_category needs category prompts trained: model.category_prompt_prob > 0")
        self.item_categories = None if categories is None else jnp.asarray(
            category_ids(categories, model_config.category_level))
        self.features = jnp.asarray(item_feature_table(model_config, features))
        self.seed_candidates = nearest_items(self.features, int(model_config.seed_neighbours)) \
            if self.seed_prompt_prob > 0 else None
        self.codes = jnp.asarray(sid_table.codes, jnp.int32)
        codebook_size = max(sid_table.codebook_sizes)
        self.trie = build_trie(sid_table.codes, codebook_size, model_config.get("trie", "auto"))
        self.children = TrieTables.of(self.trie)
        self.leaf_items = jnp.asarray(self.trie.sid_items)
        self.qformer = QFormer(from_config(QFormerConfig, model_config))
        self.module = GAT(from_config(GATConfig, model_config.decoder, num_levels=sid_table.num_levels,
                                      codebook_size=codebook_size, num_items=sid_table.num_items,
                                      contextual_residual=model_config.contextual_residual,
                                      gate_hidden=model_config.gate_hidden,
                                      num_categories=int(self.item_categories.max()) + 1
                                      if self.category_prompt_prob > 0 else 0))
        self.pretrained_qformer = pretrained_qformer
        self.sampler = Sampler(sid_table.num_items, model_config.sampler_dim) if model_config.sampler_dim else None
        self.frozen = ("qformer", "gat") if self.sampler else BACKBONE if model_config.freeze_backbone else ()
        # A frozen Q-Former gets no update, so its backward pass is skipped too.
        self.qformer_frozen = is_frozen("qformer/queries", tuple(frozen) + self.frozen)
        self.beam_size = model_config.beam_size
        self.exclude_history = bool(model_config.exclude_history)
        self.engaged_history = bool(model_config.engaged_history)
        self.unroll_decoding = unroll_decoding  # only to count FLOPs (see beam_search)
        self.target_action = ACTIONS.index(model_config.target_action)
        self.negatives_per_positive = int(model_config.negatives_per_positive)
        self.curriculum = tuple(int(k) for k in model_config.curriculum)
        self.negative_item_weight = float(model_config.negative_item_weight)
        self.log_odds_shift = self.calibration_shift(interactions)

    def calibration_shift(self, interactions: Interactions) -> float:
        """``log α``: how much training's negative subsampling (the last curriculum phase's, which the
        action head saw last) raised the log-odds of a positive against the training split's logged
        ratio (0 when every negative is kept)."""
        k = self.curriculum[-1] if self.curriculum else self.negatives_per_positive
        if k <= 0:
            return 0.0
        train = train_event_mask(interactions)
        positives = positive_events(interactions.actions, len(interactions.items))[train]
        logged = positives.sum() / max((~positives).sum(), 1)
        return float(np.log((1.0 / k) / max(logged, 1e-12)))

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

    def prompt_tokens(self, params, batch, profile, explore=None, category=None, seed=None):
        """Steering prompt tokens ``[B, S, d]`` (between the history and the intent) and which of them
        are present ``[B, S]``, or None without a prompt: ``seed`` (item ids ``[B]``, -1 none) as
        an event with the ``[SEED]`` action (two tokens), ``[EXPLORE]`` (``explore [B]`` bool) and
        the soft prompt of ``category`` (``[B]``, -1 none)."""
        variables = {"params": params["gat"]}
        tokens, present = [], []
        if seed is not None:
            items = jnp.maximum(seed, 0)[:, None]
            residual, _ = self.module.apply(variables, items, self.features[items], profile, method=GAT.contextual)
            action = jnp.full(items.shape, SEED)
            tokens.append(self.module.apply(variables, self.codes[items], action, residual, method=GAT.history_tokens))
            present.append(jnp.repeat((seed >= 0)[:, None], 2, 1))
        if explore is not None:
            tokens.append(self.module.apply(variables, jnp.full(explore.shape, EXPLORE), method=GAT.intent_token))
            present.append(explore[:, None])
        if category is not None:
            tokens.append(self.module.apply(variables, category, method=GAT.category_token))
            present.append((category >= 0)[:, None])
        return (jnp.concatenate(tokens, 1), jnp.concatenate(present, 1)) if tokens else None

    def novel(self, batch, items):
        """Whether each of ``items [B, K]`` lies outside the categories (``model.category_level``) of
        the user's engaged history."""
        engaged, mask = self.engaged(batch)
        categories = self.item_categories
        same = (categories[jnp.maximum(items, 0)][:, :, None] == categories[engaged][:, None, :]) & mask[:, None, :]
        return ~same.any(-1)

    def training_prompt(self, batch, positive, rng) -> dict:
        """The steering prompts of a training batch (``prompt_tokens`` arguments), each before a
        positive target: with probability ``model.seed_prompt_prob`` one of the target's
        ``seed_candidates`` as the seed, with probability ``model.explore_prob`` ``[EXPLORE]`` if
        the target is ``novel``, with probability ``model.category_prompt_prob`` the target's
        category prompt."""
        prompt = {}
        seed_rng, explore_rng, category_rng = jax.random.split(rng, 3)
        if self.seed_prompt_prob > 0:
            draw_rng, pick_rng = jax.random.split(seed_rng)
            draw = jax.random.uniform(draw_rng, positive.shape) < self.seed_prompt_prob
            pick = jax.random.randint(pick_rng, positive.shape, 0, self.seed_candidates.shape[1])
            prompt["seed"] = jnp.where(positive & draw, self.seed_candidates[batch["target"], pick], -1)
        if self.explore_prob > 0:
            draw = jax.random.uniform(explore_rng, positive.shape) < self.explore_prob
            prompt["explore"] = positive & draw & self.novel(batch, batch["target"][:, None])[:, 0]
        if self.category_prompt_prob > 0:
            draw = jax.random.uniform(category_rng, positive.shape) < self.category_prompt_prob
            prompt["category"] = jnp.where(positive & draw, self.item_categories[batch["target"]], -1)
        return prompt

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
        params = {"qformer": qformer, "gat": self.module.init(g_rng, method=self._init_all, batch=batch,
                                                              qformer=nn.meta.unbox(qformer))["params"]}
        if self.sampler:
            hidden = jnp.zeros((1, self.module.config.embed_dim))
            params["sampler"] = self.sampler.init(jax.random.fold_in(rng, 3), hidden)["params"]
        return params

    def _init_all(self, module: GAT, batch, qformer):
        items, mask = self.engaged(batch)
        states = self.qformer.apply({"params": qformer}, self.features[items], mask)
        prompt, profile = module.prompt(states)
        residual, _ = module.contextual(batch["history"], self.features[batch["history"]], profile)
        history = module.history_tokens(self.codes[batch["history"]], jnp.ones_like(batch["history"]), residual)
        codes = module.code_tokens(self.codes[batch["target"]])
        intent = module.intent_token(jnp.full(batch["target"].shape, ANY))
        steering = [module.category_token(jnp.zeros_like(batch["target"]))] if module.config.num_categories else []
        tokens = jnp.concatenate([prompt, history, *steering, intent, codes], 1)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2])
        hidden, _ = module(tokens, positions, causal_mask(jnp.ones(tokens.shape[:2], bool)))
        return module.code_logits(hidden[:, -1], 0), module.action_logits(hidden[:, -1])

    def training_rows(self, rows: np.ndarray, interactions: Interactions) -> np.ndarray:
        """Every positive target and ``negatives_per_positive`` negatives per positive."""
        return self.sample_negatives(rows, interactions, self.negatives_per_positive)

    def training_phases(self, rows: np.ndarray, interactions: Interactions) -> tuple[np.ndarray, ...]:
        """One phase per ``model.curriculum`` ratio (stage 2), else ``training_rows``."""
        if not self.curriculum:
            return super().training_phases(rows, interactions)
        return tuple(self.sample_negatives(rows, interactions, k) for k in self.curriculum)

    def sample_negatives(self, rows: np.ndarray, interactions: Interactions, k: int) -> np.ndarray:
        """Every positive target and ``k`` negatives per positive (a seeded subset; every negative
        when ``k`` is 0)."""
        if k <= 0:
            return rows
        positive = positive_events(interactions.actions, len(interactions.items))[
            interactions.offsets[rows[:, 0]] + rows[:, 1]]
        negatives = np.flatnonzero(~positive)
        keep = min(len(negatives), k * int(positive.sum()))
        chosen = np.random.default_rng(self.config.negative_sample_seed).choice(negatives, keep, replace=False)
        return rows[np.sort(np.concatenate([np.flatnonzero(positive), chosen]))]

    def loss(self, params, batch, rng, step=None):
        del step
        if self.sampler:
            return self.distillation_loss(params, batch)
        q_rng, dropout_rng = jax.random.split(rng)
        prefix, valid, profile, gate = self.prefix(params, batch, q_rng, with_gate=True)
        target_actions = self._actions(batch, "target_action", batch["target"].shape)
        positive = jnp.isin(target_actions, POSITIVE)
        intent_a = jnp.where(positive, target_actions, self.target_action)
        view_a = self._target_view(params, batch, profile, intent_a, with_residual=False)
        steering = self.prompt_tokens(params, batch, profile, **self.training_prompt(
            batch, positive, jax.random.fold_in(rng, 2)))
        present = None
        if steering is not None:
            view_a, present = jnp.concatenate([steering[0], view_a], 1), steering[1]
        view_b = self._target_view(params, batch, profile, jnp.full(target_actions.shape, ANY), with_residual=True)
        tokens, positions, mask = packed_views(prefix, valid, view_a, view_b, present)
        hidden, _ = self.module.apply({"params": params["gat"]}, tokens, positions, mask, True,
                                      rngs={"dropout": dropout_rng})
        levels = self.codes.shape[1]
        p = prefix.shape[1] + (0 if present is None else present.shape[1])
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

    def intent_hidden(self, params, batch):
        """The final hidden state ``[B, d]`` of the ``target_action`` intent after the prompt and
        history (what generates the first code): one forward pass."""
        variables = {"params": params["gat"]}
        prefix, valid, _ = self.prefix(params, batch)
        intent = self.module.apply(variables, jnp.full(valid.shape[:1], self.target_action), method=GAT.intent_token)
        tokens = jnp.concatenate([prefix, intent], 1)
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2])
        mask = causal_mask(jnp.concatenate([valid, jnp.ones_like(valid[:, :1])], 1))
        return self.module.apply(variables, tokens, positions, mask)[0][:, -1]

    def sampler_logits(self, params, batch):
        """The sampler's item logits ``[B, N]`` (no gradient into the teacher)."""
        hidden = jax.lax.stop_gradient(self.intent_hidden(params, batch))
        return self.sampler.apply({"params": params["sampler"]}, hidden).astype(jnp.float32)

    def distillation_loss(self, params, batch):
        """Cross-entropy of the sampler against the teacher's beam distribution (a SID's mass split
        evenly over the items that share it)."""
        sids, scores = self.search(jax.lax.stop_gradient(params), batch, self.beam_size).results()
        items = self.leaf_items[jnp.maximum(sids, 0)]  # [B, W, C], -1 padded
        share = (items >= 0) / jnp.maximum((items >= 0).sum(-1, keepdims=True), 1)
        weights = jax.nn.softmax(scores, -1)[..., None] * share  # dead beams: -inf scores, weight 0
        log_probs = jax.nn.log_softmax(self.sampler_logits(params, batch), -1)
        picked = jnp.take_along_axis(log_probs, jnp.maximum(items, 0).reshape(items.shape[0], -1), 1)
        loss = -(weights * picked.reshape(items.shape)).sum((1, 2)).mean()
        return loss, {"distill_loss": loss}

    def sampler_topk(self, params, batch, k):
        """The sampler's top-``k`` items ``[B, k]``: one forward pass and one product with the item table."""
        logits = self.sampler_logits(params, batch)
        if self.exclude_history:
            history, engaged = self.engaged(batch)
            rows = jnp.arange(logits.shape[0])[:, None]
            logits = logits.at[rows, history].min(jnp.where(engaged, NEG_INF, jnp.inf))
        return jax.lax.top_k(logits, k)[1]

    def search(self, params, batch, beam_size: int, intents=None, prompt: dict | None = None):
        """Beam search over the trie of SIDs after the intent (``target_action`` by default), with the
        steering ``prompt`` (``prompt_tokens`` arguments) before it."""
        variables = {"params": params["gat"]}
        prefix, valid, profile = self.prefix(params, batch)
        batch_size, length = prefix.shape[:2]
        positions = jnp.broadcast_to(jnp.arange(length), (batch_size, length))
        steering = self.prompt_tokens(params, batch, profile, **(prompt or {}))
        if steering is not None:  # absent prompt tokens are masked and take no position
            prefix, valid = jnp.concatenate([prefix, steering[0]], 1), jnp.concatenate([valid, steering[1]], 1)
            positions = jnp.concatenate([positions, length - 1 + jnp.cumsum(steering[1], 1)], 1)
        start = positions[:, -1] + 1  # the intent's position [B]
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
            hidden, caches = self.module.apply(variables, token, start + level, memories, valid, caches, level,
                                               method=GAT.step)
            logits = self.module.apply(variables, hidden, level, method=GAT.code_logits)
            return jax.nn.log_softmax(logits.astype(jnp.float32), -1), caches

        return beam_search(step, caches, trie_children(self.children), levels, batch_size, beam_size,
                           unroll=self.unroll_decoding)

    def topk(self, params, batch, k):
        """The sampler's list when there is one, else ``steer`` with the eval stage's prompt
        (``model.steer_explore``, ``model.steer_category``; both off: ``[CLICK]`` alone)."""
        if self.sampler:
            return self.sampler_topk(params, batch, k)
        rows = batch["history"].shape[:1]
        category = None if self.steer_category < 0 else jnp.full(rows, self.steer_category)
        return self.steer(params, batch, k, explore=self.steer_explore, category=category)

    def steer(self, params, batch, k, explore: bool = False, category=None, seed=None):
        """The top-``k`` items ``[B, k]`` after a steering prompt and ``[CLICK]`` (§4.4): ``explore``
        prepends ``[EXPLORE]`` (novel items that stay relevant), ``category [B]`` a category's soft
        prompt (ids of ``category_ids``; -1 none), ``seed [B]`` an item followed by ``[SEED]`` (more
        like it; -1 none). No prompt: ``[CLICK]`` alone, the best bet. Raises for a prompt that
        training did not teach (its ``model.*_prob`` is 0)."""
        given = {"seed_prompt_prob": seed is not None, "explore_prob": explore,
                 "category_prompt_prob": category is not None}
        untaught = [name for name, used in given.items() if used and getattr(self, name) <= 0]
        if untaught:
            raise ValueError(f"steering with a prompt that training did not teach: set model.{untaught[0]} > 0 "
                             f"and train (configs/gat.py)")
        prompt = {"category": category, "seed": seed,
                  "explore": jnp.ones(batch["history"].shape[:1], bool) if explore else None}
        sids, _ = self.search(params, batch, max(self.beam_size, k), prompt=prompt).results()
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


def nearest_items(table, k: int, chunk: int = 4096) -> jax.Array:
    """The ``k`` nearest other items of every item ``[N, k]`` by dot product of its rows of the item
    feature ``table [N, F]`` (L2-normalised sources: cosine), nearest first."""
    if not 0 < k < len(table):
        raise ValueError(f"model.seed_neighbours={k} must be in [1, {len(table) - 1}] (the other items)")
    found = []
    for start in range(0, len(table), chunk):
        ids, _ = exact_topk(table[start:start + chunk], table, k + 1)
        itself = ids == jnp.arange(start, start + len(ids))[:, None]
        # Stable: the others keep their order, the item itself (if among them) moves last.
        found.append(jnp.take_along_axis(ids, jnp.argsort(itself, axis=1, stable=True), 1)[:, :k])
    return jnp.concatenate(found)


def category_ids(categories: list[tuple[str, ...]], level: int) -> np.ndarray:
    """Each item's category id ``[num_items]`` at ``level`` of its path (ids in name order; a path
    without that level is the category '')."""
    names = [path[level] if len(path) > level else "" for path in categories]
    return np.unique(names, return_inverse=True)[1].astype(np.int32)


def packed_views(prefix, valid, view_a, view_b, present=None):
    """Tokens, RoPE positions ``[B, T]`` and attention mask of ``[prefix, view A, view B]``: both
    views start at the same position after the prefix and attend causally to it and to themselves,
    not to each other. ``present [B, S]``: which of view A's first S tokens (steering prompts) are
    there; an absent one is masked and takes no position."""
    batch, p = prefix.shape[:2]
    a, b = view_a.shape[1], view_b.shape[1]
    tokens = jnp.concatenate([prefix, view_a, view_b], 1)
    in_a = jnp.ones((batch, a), bool)
    if present is not None:
        in_a = in_a.at[:, :present.shape[1]].set(present)
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (batch, p)), p - 1 + jnp.cumsum(in_a, 1),
                                 jnp.broadcast_to(p + jnp.arange(b), (batch, b))], 1)
    index = jnp.arange(p + a + b)
    is_view_b = index >= p + a
    is_view_a = (index >= p) & ~is_view_b
    same_view = ~((is_view_a[:, None] & is_view_b[None, :]) | (is_view_b[:, None] & is_view_a[None, :]))
    keys = jnp.concatenate([valid, in_a, jnp.ones((batch, b), bool)], 1)
    mask = ((index[None, :] <= index[:, None]) & same_view)[None] & keys[:, None, :]
    return tokens, positions, mask
