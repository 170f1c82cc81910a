"""End-to-end latent tokenization (design doc §5, experimental): a residual routing transformer whose
discrete codes are learned with the retrieval task, and an item tower that tokenizes items with the
same codebooks, so items can be indexed by their codes.

- **User side** (``LatentRouter``): ``H_0`` is the Q-Former's query states ``[B, M, D]`` over the
  history's frozen item features (``user_tower.QFormer``, as two_tower/CRBR). Level l (l = 0..L−1,
  the doc's layer l+1) routes ``log p_l = log softmax(Projector_l(mean(LN(H_l))) C_lᵀ)`` and picks
  ``q_l = gumbel_softmax(log p_l, τ) C_l`` (straight-through: one-hot forward, soft gradient; τ
  anneals with the step, ``crbr.gumbel_temperature``); then ``H_{l+1} = Block([H_l; q_l W + e_l])[:M]``:
  the code becomes a token the M states attend to, then is dropped, so every level has the same
  shapes. One pre-norm transformer block (``sasrec.SelfAttentionBlock``) serves every level with a
  level embedding ``e_l`` (the doc's recurrent refinement, Universal-Transformer style), so beam
  search scans the levels with one body. ``Σ_l q_l`` predicts the target item vector ``y``. The
  user vector ``u = Projector_0(H_0)/‖·‖`` (what level 0's codes are scored against) is the
  continuous retrieval query.
- **Item side** (§5.3.3, §5.4.4: a dual-tower VQ-VAE): the two-tower ``ItemTower`` gives unit item
  vectors ``y``, tokenized by greedy nearest-code residual quantization over the *same*
  ``C_0..C_{L−1}`` (``rq_vae.residual_quantize``, with its VQ codebook + β-commitment loss) and
  decoded back to the item's frozen features (``rq_vae.Decoder``, squared error). The item tower is
  the "ground truth tokenizer": by default only it fits the codebooks, the user side reads ``sg(C)``
  (``user_trains_codebooks``; when the user side also moves them, its early collapse onto one code
  drags the codes and the items with it, §5.3's trap 1, seen on the :tiny data). With
  ``kmeans_init`` the codebooks start as the residual k-means of the initial item vectors. An item's
  codes are its SID; the index is recomputed from the params in jit each evaluation round
  (``eval_params``), never stored stale.
- **Losses** (``latent_loss`` + reconstruction; a weight of 0 turns a part off; untuned defaults, the
  doc gives none): InfoNCE of ``u`` against ``y`` (in-batch + sampled negatives, two_tower's), and the
  hierarchy-guarantee protocol (§5.4): explicit residual targets ``t_0 = y, t_l = t_{l−1} − sg(q_{l−1})``
  with ``Σ_l ‖q_l − t_l‖²`` (``residual_targets=False``: §5.2's ``‖Σ_l q_l − y‖²`` instead); the
  progressive margin ``Σ_k max(0, L_{k+1} − L_k + δ)`` on ``L_k = ‖y − Σ_{j<k} q_j‖²``, the prediction
  error after k levels; code-use entropy (``crbr.load_balance_loss``: minus the entropy of the
  batch-mean routing distribution, and of the items' soft assignment ``softmax(−‖r − c‖²/τ_a)``);
  orthogonality ``Σ_l cos²(q_l, q_{l+1})``; matching, the cross-entropy of each level's routing
  against the item tower's code of the target (user codes must become item codes). ``y`` is a
  stop-gradient target of the residual and margin terms: the user side learns to reconstruct it.
- **Diagnostics** (training metrics, so in ``train/metrics.jsonl`` and TensorBoard every
  ``train.log_every_steps``; a batch's view): per level ``user_usage_l*``/``user_perplexity_l*``
  (codes picked), ``item_perplexity_l*``, ``explained_l*`` (share of ``E_0 = ‖y‖²`` the user's level l
  removes: ``(E_l − E_{l+1})/E_0``, the residual energy), ``margin_satisfied_l*`` (how often level
  l+1 lowers the error by ≥ δ) and ``agreement_l*``/``agreement_path`` (the user's argmax code = the
  target's item code). After training the train stage writes the catalogue's learned SIDs as a SID
  table artifact with its codebook health report (usage, perplexity, residual energy, collisions):
  ``train/{sid_table.*, index.json, health.json, health.png}`` (``learned_sid_table``); the ``index.json``
  lets another system train on them (``tokenizer.name=index_json``).
- **Retrieval** (``topk``): beam search (``decoding.beam_search``, width ``beam_size``) over the
  user's code log-probabilities, constrained to the code paths some item has (a trie built in jit:
  ``trie.prefix_keys`` + ``beam_search.key_children``, memory O(N·L)); the items under the beams (up
  to ``leaf_size`` per path: items may share codes, a collision group keeps its lowest ids) are
  scored exactly by ``u · y`` and the top k returned. ``eval.index='scann'`` searches every item
  with ``u`` instead (``query_set``; no code index: what the beams' candidates are measured against).

Params: ``{"qformer", "item_tower", "router", "item_decoder"}``; the router's logical axes:
``embed``, ``mlp``, ``codebook``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gr_jax.decoding.beam_search import BeamState, beam_search, key_children
from gr_jax.decoding.trie import leaf_members, prefix_keys
from gr_jax.models.crbr import gumbel_softmax, gumbel_temperature, layer_dense_init, load_balance_loss
from gr_jax.models.layers.structs import from_config
from gr_jax.models.sasrec import SelfAttentionBlock
from gr_jax.models.two_tower import FeatureTowerBase, info_nce_with_negatives
from gr_jax.ops import l2_normalize
from gr_jax.retrieval.multi_query import merge_by_max
from gr_jax.tokenizers.kmeans import kmeans
from gr_jax.tokenizers.rq_vae import Decoder, reconstruction_loss, residual_quantize
from gr_jax.tokenizers.sid_table import SIDTable


class LatentRouter(nn.Module):
    """Shared codebooks ``[L, K, E]``, per-level projectors and the shared refinement block.
    Training: ``__call__(states, rng, temperature, hard)``; decoding: ``step``; items: ``quantize``."""

    num_levels: int = 3  # L
    codebook_size: int = 64  # K codes per level
    embed_dim: int = 64  # D of the user states
    item_dim: int = 64  # E of codes and item vectors
    mlp_dim: int = 256  # projector width
    num_heads: int = 4  # refinement block
    block_mlp_dim: int = 256
    beta: float = 0.25  # items' commitment weight
    user_trains_codebooks: bool = False  # False: the user side reads sg(C), the item tower alone fits the codes

    def setup(self):
        if self.num_levels < 2:
            raise ValueError(f"model.num_levels={self.num_levels}; a residual hierarchy needs at least 2 levels")
        levels, d, e = self.num_levels, self.embed_dim, self.item_dim

        def param(name, init, axes, shape):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape)

        # Code norms ~ 1/sqrt(L): L codes sum to about a unit vector, the items' scale.
        self.codebooks = param("codebooks", nn.initializers.normal((levels * e) ** -0.5),
                               (None, "codebook", "embed"), (levels, self.codebook_size, e))
        self.hidden_kernel = param("hidden_kernel", layer_dense_init, (None, "embed", "mlp"), (levels, d, self.mlp_dim))
        self.hidden_bias = param("hidden_bias", nn.initializers.zeros, (None, "mlp"), (levels, self.mlp_dim))
        self.out_kernel = param("out_kernel", layer_dense_init, (None, "mlp", "embed"), (levels, self.mlp_dim, e))
        self.code_proj = param("code_proj", nn.initializers.lecun_normal(), (None, "embed"), (e, d))
        self.level_embed = param("level_embed", nn.initializers.normal(0.02), (None, "embed"), (levels, d))
        self.pool_norm = nn.LayerNorm()
        self.block = SelfAttentionBlock(self.num_heads, self.block_mlp_dim, dropout=0.0)

    def user_codebook(self, level) -> jax.Array:
        """``C_l`` as the user side reads it (a stop-gradient unless ``user_trains_codebooks``)."""
        codebook = self.codebooks[level]
        return codebook if self.user_trains_codebooks else jax.lax.stop_gradient(codebook)

    def project(self, states: jax.Array, level) -> jax.Array:
        """``Projector_l``: states ``[..., M, D]`` -> ``[..., E]``, what level l's codes are scored against."""
        h = nn.gelu(self.pool_norm(states).mean(-2) @ self.hidden_kernel[level] + self.hidden_bias[level])
        return h @ self.out_kernel[level]

    def log_probs(self, states: jax.Array, level) -> jax.Array:
        """Routing log-probabilities ``[..., K]`` (float32) of states ``[..., M, D]`` at ``level``."""
        logits = self.project(states, level) @ self.user_codebook(level).T
        return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

    def user_vector(self, states: jax.Array) -> jax.Array:
        """The continuous user vector ``[..., E]``: level 0's projection of ``H_0``, L2-normalised."""
        return l2_normalize(self.project(states, 0))

    def refine(self, states: jax.Array, code: jax.Array, level) -> jax.Array:
        """``H_{l+1} = Block([H_l; code W + e_l])[:M]`` for states ``[..., M, D]`` and codes ``[..., E]``."""
        token = code.astype(states.dtype) @ self.code_proj + self.level_embed[level]
        return self.block(jnp.concatenate([states, token[..., None, :]], -2), None, False)[..., :-1, :]

    def step(self, states: jax.Array, previous: jax.Array, level) -> tuple[jax.Array, jax.Array]:
        """One decoding level (``beam_search``'s step): refines states ``[B, W, M, D]`` by the code
        ``previous [B, W]`` chosen at the level before (none at level 0), then routes them."""
        before = jnp.maximum(level - 1, 0)
        refined = self.refine(states, self.user_codebook(before)[jnp.maximum(previous, 0)], before)
        states = jnp.where(level == 0, states, refined)
        return self.log_probs(states, level), states

    def __call__(self, states: jax.Array, rng: jax.Array, temperature, hard: bool = True) -> dict:
        """Gumbel-routed pass over states ``[B, M, D]``: chosen code vectors ``q [B, L, E]``, the unit
        ``user`` vector ``[B, E]``, noise-free ``log_probs [B, L, K]`` and ``codes [B, L]``."""
        chosen, log_probs, codes, user = [], [], [], self.user_vector(states)
        for level, key in enumerate(jax.random.split(rng, self.num_levels)):
            if level:
                states = self.refine(states, chosen[-1], level - 1)
            log_probs.append(self.log_probs(states, level))
            selection = gumbel_softmax(key, log_probs[-1], temperature, hard)
            chosen.append(selection @ self.user_codebook(level).astype(selection.dtype))
            codes.append(jnp.argmax(selection, -1).astype(jnp.int32))
        q = jnp.stack(chosen, 1)
        return {"q": q, "user": user, "log_probs": jnp.stack(log_probs, 1), "codes": jnp.stack(codes, 1)}

    def quantize(self, vectors: jax.Array) -> dict:
        """The items' tokenization by the shared codebooks: ``rq_vae.residual_quantize`` of ``[N, E]``,
        in float32 whatever the compute dtype (the codes are the index: training, evaluation and the
        saved SIDs must agree)."""
        return residual_quantize(vectors.astype(jnp.float32), self.codebooks.astype(jnp.float32), self.beta)


def residual_targets(y: jax.Array, q: jax.Array) -> jax.Array:
    """§5.4.1's targets ``[B, L, E]``: ``t_0 = y``, ``t_l = t_{l−1} − sg(q_{l−1})`` for item vectors
    ``y [B, E]`` and chosen codes ``q [B, L, E]``."""
    before = jnp.cumsum(q, 1) - q  # Σ_{j<l} q_j
    return y[:, None] - jax.lax.stop_gradient(before)


def depth_errors(y: jax.Array, q: jax.Array) -> jax.Array:
    """``[B, L + 1]``: ``‖y − Σ_{j<k} q_j‖²`` for k = 0..L (k = 0: ``‖y‖²``), the error after k levels."""
    partial = jnp.concatenate([jnp.zeros_like(q[:, :1]), jnp.cumsum(q, 1)], 1)
    return jnp.sum((y[:, None] - partial) ** 2, -1)


def margin_loss(errors: jax.Array, delta: float) -> jax.Array:
    """§5.4.2: ``Σ_k max(0, L_{k+1} − L_k + δ)`` over consecutive levels of ``errors [B, K]``, batch
    mean; zero when every level lowers the error by at least δ."""
    return jnp.mean(jnp.sum(jax.nn.relu(errors[:, 1:] - errors[:, :-1] + delta), -1))


def orthogonality_loss(q: jax.Array) -> jax.Array:
    """``Σ_l cos²(q_l, q_{l+1})`` of consecutive codes ``[B, L, E]``, batch mean."""
    unit = l2_normalize(q)
    return jnp.mean(jnp.sum(jnp.sum(unit[:, 1:] * unit[:, :-1], -1) ** 2, -1))


def code_use(codes: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """Per level: the share of the K codes used and the perplexity ``exp H`` of ``codes [N, L]``."""
    p = jax.nn.one_hot(codes, codebook_size).mean(0)  # [L, K]
    entropy = -jnp.sum(p * jnp.log(jnp.where(p > 0, p, 1.0)), -1)
    return (p > 0).mean(-1), jnp.exp(entropy)


@dataclasses.dataclass(frozen=True)
class LatentLoss:
    """The loss weights and knobs (``model.*``); a weight of 0 switches its part off."""

    temperature: float = 0.05  # InfoNCE temperature
    residual_weight: float = 1.0
    residual_targets: bool = True  # False: §5.2's ‖Σ_l q_l − y‖² instead of per-level targets
    margin_weight: float = 1.0
    margin_delta: float = 0.002  # δ
    entropy_weight: float = 1.0
    assignment_temperature: float = 0.1  # items' soft code assignment for the entropy term
    orthogonality_weight: float = 0.1
    match_weight: float = 1.0
    quantization_weight: float = 1.0
    reconstruction_weight: float = 1.0  # the item decoder's (``LatentRecommender.loss``)


def latent_loss(outputs: dict, items: dict, vectors: jax.Array, ids: jax.Array, batch_size: int,
                w: LatentLoss) -> tuple[jax.Array, dict]:
    """(loss, metrics incl. diagnostics) of ``LatentRouter.__call__`` outputs for a batch whose item
    vectors ``[B + S, E]`` (``ids``: the B targets, then S sampled negatives) are tokenized as
    ``items`` (``LatentRouter.quantize``)."""
    q, log_probs = outputs["q"], outputs["log_probs"]
    positives, targets = vectors[:batch_size], ids[:batch_size]
    nce = info_nce_with_negatives(outputs["user"], positives, vectors[batch_size:], targets, ids[batch_size:],
                                  w.temperature)
    y = jax.lax.stop_gradient(positives)
    if w.residual_targets:
        residual = jnp.mean(jnp.sum((q - residual_targets(y, q)) ** 2, (1, 2)))
    else:
        residual = jnp.mean(jnp.sum((q.sum(1) - y) ** 2, -1))
    errors = depth_errors(y, q)
    margin = margin_loss(errors[:, 1:], w.margin_delta)
    assignment = jax.nn.softmax(-items["distances"] / w.assignment_temperature, -1)
    entropy = load_balance_loss(jnp.exp(log_probs)) + load_balance_loss(assignment)
    orthogonality = orthogonality_loss(q)
    item_codes = items["codes"][:batch_size]
    match = -jnp.mean(jnp.sum(jnp.take_along_axis(log_probs, item_codes[..., None], -1), (1, 2)))
    quantization = items["level_losses"].sum()
    total = (nce + w.residual_weight * residual + w.margin_weight * margin + w.entropy_weight * entropy
             + w.orthogonality_weight * orthogonality + w.match_weight * match
             + w.quantization_weight * quantization)
    metrics = {"info_nce_loss": nce, "residual_loss": residual, "margin_loss": margin, "entropy_loss": entropy,
               "orthogonality_loss": orthogonality, "match_loss": match, "quantization_loss": quantization}
    return total, metrics | diagnostics(outputs["codes"], jnp.argmax(log_probs, -1), items["codes"], item_codes,
                                        errors, w.margin_delta, log_probs.shape[-1])


def diagnostics(user_codes, user_argmax, batch_item_codes, target_codes, errors, delta: float,
                codebook_size: int) -> dict:
    """Per-level code use on both sides, explained energy, margin satisfaction and code agreement
    (module docstring); ``errors [B, L + 1]`` from ``depth_errors``."""
    user_usage, user_perplexity = code_use(user_codes, codebook_size)
    _, item_perplexity = code_use(batch_item_codes, codebook_size)
    energy = errors.mean(0)
    explained = (energy[:-1] - energy[1:]) / energy[0]
    satisfied = (errors[:, 2:] <= errors[:, 1:-1] - delta).mean(0)
    agree = user_argmax == target_codes
    per_level = {"user_usage": user_usage, "user_perplexity": user_perplexity, "item_perplexity": item_perplexity,
                 "explained": explained, "agreement": agree.mean(0), "margin_satisfied": satisfied}
    metrics = {f"{name}_l{l}": values[l] for name, values in per_level.items() for l in range(values.shape[0])}
    return metrics | {"agreement_path": agree.all(-1).mean()}


def item_index(codes: jax.Array, codebook_size: int) -> dict:
    """The jittable trie of item codes ``[N, L]``: every level's prefix keys sorted (``"prefix_keys"``
    ``[L, N]``) and the items in full-key order (``"leaf_order"`` ``[N]``)."""
    keys = prefix_keys(codes, codebook_size)
    return {"prefix_keys": jnp.sort(keys, 0).T, "leaf_order": jnp.argsort(keys[:, -1], stable=True)}


def search(router: LatentRouter, params: dict, states: jax.Array, index: dict, beam_size: int) -> BeamState:
    """Beam search over the codes of ``index``'s items from user states ``[B, M, D]``; each beam's
    prefix is its full code key after the last level; the cache holds its refined states."""
    batch = states.shape[0]
    cache = jnp.broadcast_to(states[:, None], (batch, beam_size) + states.shape[1:])

    def step(states, previous, level):
        return router.apply({"params": params}, states, previous, level, method=LatentRouter.step)

    return beam_search(step, cache, key_children(index["prefix_keys"], router.codebook_size), router.num_levels,
                       batch, beam_size)


def rank_beam_items(users: jax.Array, state: BeamState, index: dict, item_vectors: jax.Array, leaf_size: int,
                    k: int) -> tuple[jax.Array, jax.Array]:
    """The top ``k`` of the items under the beams (``leaf_size`` per beam) by ``user · y`` for user
    vectors ``[B, E]``: (ids, scores) ``[B, k]``, -1 / -inf padded."""
    leaf_keys = index["prefix_keys"][-1]
    ids = leaf_members(leaf_keys, index["leaf_order"], jnp.where(state.alive, state.prefixes, -1), leaf_size)
    batch = ids.shape[0]
    ids = ids.reshape(batch, -1)  # [B, W·S]; beams hold distinct code paths, so distinct items
    scores = jnp.where(ids >= 0, jnp.einsum("be,bce->bc", users, item_vectors[jnp.maximum(ids, 0)]), -jnp.inf)
    pad = max(k - ids.shape[1], 0)
    ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return merge_by_max(ids, jnp.pad(scores, ((0, 0), (0, pad)), constant_values=-jnp.inf), k)


def residual_kmeans(vectors: jax.Array, codebook_size: int, num_levels: int) -> jax.Array:
    """Codebooks ``[L, K, E]``: k-means of ``vectors [N, E]``, then of the residuals, level by level."""
    codebooks, residual = [], vectors
    for level in range(num_levels):
        centroids, assignment = kmeans(residual, codebook_size, seed=level)
        codebooks.append(centroids)
        residual = residual - centroids[assignment]
    return jnp.stack(codebooks)


class LatentRecommender(FeatureTowerBase):
    """The latent model behind the trainer's interface (module docstring)."""

    def __init__(self, model_config: ml_collections.ConfigDict, features, pretrained_qformer: dict | None = None):
        super().__init__(model_config, features, pretrained_qformer)
        c = model_config
        if c.codebook_size ** c.num_levels >= 2 ** 31:
            raise ValueError(f"model.codebook_size={c.codebook_size} ** model.num_levels={c.num_levels} code paths "
                             "overflow the int32 prefix keys; use fewer or smaller codebooks")
        self.router = LatentRouter(num_levels=c.num_levels, codebook_size=c.codebook_size, embed_dim=c.embed_dim,
                                   item_dim=c.item_dim, mlp_dim=c.router_mlp_dim, num_heads=c.block_num_heads,
                                   block_mlp_dim=c.block_mlp_dim, beta=c.commitment_beta,
                                   user_trains_codebooks=c.user_trains_codebooks)
        self.weights = from_config(LatentLoss, c)
        self.item_decoder = Decoder((c.item_hidden_dim,), self.features.shape[-1])

    def init(self, rng: jax.Array, batch: dict) -> dict:
        """Random init; with ``model.kmeans_init`` the codebooks are the residual k-means of the
        catalogue's initial item vectors (as an RQ-VAE's first batch), so both towers start from a
        partition that uses every code."""
        tower_rng, router_rng, decoder_rng = jax.random.split(rng, 3)
        params = self.init_towers(tower_rng, batch)
        states = jnp.zeros((1, self.config.num_queries, self.config.embed_dim), jnp.float32)
        params["router"] = self.router.init(router_rng, states, router_rng, self.config.gumbel_temperature)["params"]
        params["item_decoder"] = self.item_decoder.init(decoder_rng, jnp.zeros((1, self.config.item_dim)))["params"]
        if self.config.kmeans_init:
            codebooks = residual_kmeans(self.item_vectors(nn.meta.unbox(params)), self.config.codebook_size,
                                        self.config.num_levels)
            params["router"]["codebooks"] = params["router"]["codebooks"].replace_boxed(codebooks)
        return params

    def temperature(self, step) -> jax.Array:
        """The Gumbel-softmax temperature at optimizer ``step``."""
        c = self.config
        return gumbel_temperature(step, c.gumbel_temperature, c.gumbel_temperature_min, c.gumbel_decay_rate)

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=0) -> tuple[jax.Array, dict]:
        dropout_rng, gumbel_rng, negative_rng, aux_rng = jax.random.split(rng, 4)
        c, router = self.config, {"params": params["router"]}
        temperature = self.temperature(step)
        outputs = self.router.apply(router, self.query_states(params, batch, dropout_rng), gumbel_rng, temperature,
                                    c.straight_through)
        negatives = jax.random.randint(negative_rng, (c.num_sampled_negatives,), 0, self.num_items)
        ids = jnp.concatenate([batch["target"], negatives])
        vectors = self.item_vectors(params, ids)
        items = self.router.apply(router, vectors, method=LatentRouter.quantize)
        loss, metrics = latent_loss(outputs, items, vectors, ids, batch["target"].shape[0], self.weights)
        decoded = self.item_decoder.apply({"params": params["item_decoder"]}, items["z_q"])
        reconstruction = reconstruction_loss(self.features[ids], decoded, "mse")  # the item VQ-VAE's decoder
        loss = loss + self.weights.reconstruction_weight * reconstruction
        metrics = metrics | {"reconstruction_loss": reconstruction, "gumbel_temperature": temperature}
        if c.aux_weight <= 0:
            return loss, metrics
        aux, aux_metrics = self.aux_loss(params, batch, aux_rng)
        return loss + c.aux_weight * aux, metrics | {"aux_loss": aux} | aux_metrics

    def item_codes(self, params: dict, vectors: jax.Array | None = None) -> jax.Array:
        """The items' codes ``[N, L]`` by the shared codebooks (of ``vectors``, default the catalogue's)."""
        vectors = self.item_vectors(params) if vectors is None else vectors
        return self.router.apply({"params": params["router"]}, vectors, method=LatentRouter.quantize)["codes"]

    def eval_params(self, params: dict) -> dict:
        """``params`` plus the catalogue's item vectors and the trie of their codes, once per round."""
        params = super().eval_params(params)
        codes = self.item_codes(params, params["item_vectors"])
        return params | {"item_index": item_index(codes, self.config.codebook_size)}

    def topk(self, params: dict, batch: dict, k: int) -> jax.Array:
        """The items under the trie-constrained beams, ranked by their exact score."""
        index = params.get("item_index")
        if index is None:
            index = item_index(self.item_codes(params), self.config.codebook_size)
        states, router = self.query_states(params, batch), {"params": params["router"]}
        state = search(self.router, params["router"], states, index, self.config.beam_size)
        users = self.router.apply(router, states, method=LatentRouter.user_vector)
        return rank_beam_items(users, state, index, self.catalogue(params), self.config.leaf_size, k)[0]

    def query_set(self, params: dict, batch: dict) -> jax.Array:
        """The user vector ``[B, 1, E]``: ``eval.index='scann'`` searches every item with it, no code
        index (the reference the beams' candidates are measured against)."""
        states = self.query_states(params, batch)
        return self.router.apply({"params": params["router"]}, states, method=LatentRouter.user_vector)[:, None]

    def learned_sid_table(self, params: dict) -> SIDTable:
        """The catalogue's learned codes as a SID table (collisions kept), with the shared codebooks."""
        codes = jax.jit(self.item_codes)(params)
        codebooks = jax.device_get(params["router"]["codebooks"])
        return SIDTable(jax.device_get(codes), (self.config.codebook_size,) * self.config.num_levels,
                        codebooks=list(codebooks), meta={"tokenizer": "latent", "input": self.config.item_features})
