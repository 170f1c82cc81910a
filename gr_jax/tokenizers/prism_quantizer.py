"""PRISM's Purified Semantic Quantizer (PSQ): an RQ-VAE over ``[e_text ; g ⊙ e_cf]`` with
Adaptive Collaborative Denoising (ACD) and Hierarchical Semantic Anchoring (HSA).

PRISM (arXiv 2601.16556), tokenize stage, as specified in SPEC §3:

* **ACD.** A trust gate ``g = σ(MLP(e_cf))`` (one value per CF dimension) weighs the
  collaborative embedding; the encoder input is ``LN([e_text ; g ⊙ e_cf])``. The gate is
  supervised by item popularity, ``MSE(mean_d(g), pop) + 0.5·ReLU(0.04 − Var_batch(mean_d(g)))``,
  weighted by ``λ_ACD = 0.8``. Dual decoder heads on a shared trunk reconstruct ``e_text`` and
  ``g ⊙ e_cf`` (cosine loss each).
* **HSA.** Layer ``l`` of the residual quantizer is anchored to category level ``l + 1`` (see
  ``category_tags``). Each layer has a tag table (one vector per tag of its level) and a
  projection MLP into the code space; per layer
  ``s_l · [SmoothL1(softmax(−dist(proj(T_l), C_l)/0.15)·C_l, proj(T_l)) + 0.5·KL(EMA ‖ softmax)]``
  with ``dist`` the euclidean distance, ``EMA`` an exponential moving average (decay 0.98) of
  the soft tag→code assignments (kept in the ``hsa_ema`` variable collection, renormalised) and
  ``s_l = clip(0.35·log K / H(softmax), 0.25, 1.5)`` (stop-gradient) the entropy scale. Plus a
  hierarchical tag classification: the head of layer ``l`` predicts the item's level-``l + 1``
  tag from the concatenated chosen code vectors ``[c_1; …; c_l]`` (cross-entropy, items
  without that tag masked, averaged over the layers that have labels). ``L_HSA = Σ_l anchor_l +
  class_weight · L_cls``, weighted by ``λ_HSA = 0.2``.
* RQ-VAE 3 × 256 codes of dimension 32, ``β = 0.25``; training (AdamW, k-means init, dead-code
  reset) is ``rq_vae_training.fit_rq_vae`` through its module seam.

Facts taken from the authors' code (DengzhaoFang/PRISM-Rec, ``src/sid_tokenizer/prism/``), read for
formulas and defaults only:

* ``PRISM.py``: gate MLP ``Linear(d_cf, 128) → LN → ReLU → Dropout(0.2) → Linear(128, d_cf) → σ``;
  ``LayerNorm`` over the concatenation; encoder/decoder hidden layers are
  ``Linear → LN → ReLU → Dropout(0.1)``, encoder 512-256-128 → 32, decoder trunk 128-256-512; heads
  ``Linear(h, 2·d_out) → LN → ReLU → Linear(·, d_out)`` (CF head width ``max(256, 4·d_cf)``); the
  CF reconstruction target is the gated ``g ⊙ e_cf`` (not detached). Without the gate the input is
  the plain concatenation (no LN).
* ``prism_losses.py`` / ``hid_losses.py``: cosine reconstruction ``1 − cos`` per modality (weights
  1, 1); gate loss as above with ``Var`` the batch variance of the per-item mean gate and the floor
  ``0.2² = 0.04``; ``SoftAnchorLoss``: per-layer projection ``Linear(d_tag, 2·d) → LN → ReLU →
  Linear(2·d, d)``, ``cdist`` (euclidean) to the codebook, temperature 0.15, SmoothL1 (β 1, mean)
  between ``softmax·C`` and the projected tags, KL (batchmean) to the renormalised EMA (decay 0.98,
  initialised with the first assignments, updated before use), entropy scale with target
  ``0.35·log K`` clamped to [0.25, 1.5], layer weights 1; classification loss weight 1.
* ``hierarchical_classifiers.py``: head ``l`` reads ``[c_1; …; c_l]``; MLP ``Linear(in, h) → LN →
  ReLU → Dropout(0.1) → Linear(h, h/2) → LN → ReLU → Dropout → Linear(h/2, n_tags)`` with
  ``h = max(2·in, 128)``.
* ``multimodal_dataset.py``: the first category level (constant, e.g. "Beauty") is skipped, so RQ
  layer ``l`` predicts level ``l + 2`` counted from 1 (= our path index ``l + 1``); tag embeddings
  are text-encoder embeddings of the tag names. ``data/add_popularity_score.py``: popularity is
  ``log1p(train interaction count)``, min-max scaled to [0, 1].

Differences from the authors' code (SPEC wins where they disagree):

* gate-loss weight ``λ_ACD = 0.8`` (SPEC; their script's default is 0.1) and anchor weight
  ``λ_HSA = 0.2`` (SPEC). Their latest ``train_prism.py`` has dropped HSA altogether; the HSA terms
  follow ``hid_losses.py``.
* Tag embeddings: by default each tag's vector is the mean L2-normalised text embedding of the
  items carrying it (``tag_embedding='mean_text'``, no text encoder needed in this stage) instead of
  a text-encoder embedding of the tag name; ``'learned'`` gives a free trainable table per layer.
* Tags are identified by their path prefix (``('Tapes', 'Duct Tape')``), so equal names under
  different parents are different tags.
* The classification input keeps the chosen code vectors' values but adds a straight-through path
  ``c_l + r_l − sg(r_l)`` to the residual (hence the encoder), so that the classification can move
  items between codes; in their code it reaches the codebooks and the classifier only.
* Inputs: each modality is L2-normalised before fusion (``normalize_input``; SASRec/LightGCN
  vectors are not unit norm and would otherwise swamp the text after the LayerNorm); the gate reads
  the raw CF vector, whose norm carries popularity information.
* Codebooks are trained by gradient (with k-means init and dead-code reset, as ``rq_vae``), not by
  EMA, and the nearest code is taken plainly (their default quantize mode is a rotation trick). The
  quantization loss is ``rq_vae.ResidualQuantizer``'s per-level ``‖sg(r) − c‖² + β‖r − sg(c)‖²``
  divided by the code dimension (``quant_loss_reduction='mean'``, their per-element mean): summed
  over it instead, it outweighs the cosine reconstruction ~30x at the LayerNorm encoder's latent
  norm (~4) and the codes collapse (Scientific: 7 distinct SIDs for 4,344 items).
* Budget: batch 1024 × 200 epochs (their script: 256 × 500); weight decay 1e-4 (theirs 0); no
  gradient clipping (theirs 1.0), no curriculum / early stopping.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gr_jax.ops import l2_normalize, squared_distances
from gr_jax.tokenizers import rq_vae
from gr_jax.tokenizers.configs import PrismConfig
from gr_jax.tokenizers.rq_vae_training import fit_rq_vae

_EPS = 1e-6


# ----------------------------------------------------------------------------- per-item side inputs


def popularity_scores(counts: np.ndarray) -> np.ndarray:
    """``log1p(count)`` min-max scaled to [0, 1] (0.5 everywhere when all counts are equal)."""
    log = np.log1p(np.asarray(counts, np.float64))
    span = log.max() - log.min() if len(log) else 0.0
    if span <= 0:
        return np.full(len(log), 0.5, np.float32)
    return ((log - log.min()) / span).astype(np.float32)


@dataclasses.dataclass
class CategoryTags:
    """Per-item tag ids of each RQ layer (``-1``: the item's path is too short) and the vocabularies."""

    ids: np.ndarray  # int32 [N, L]
    vocab: list[list[tuple[str, ...]]]  # per layer: the path prefix of each tag id
    level_offset: int  # path index of layer 0's level

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.vocab)


def constant_root_levels(categories: Sequence[Sequence[str]]) -> int:
    """Number of leading path levels that hold at most one distinct value over the catalogue
    (e.g. Amazon's 'Industrial & Scientific' root): they cannot separate items."""
    depth = max((len(c) for c in categories), default=0)
    for level in range(depth):
        if len({c[level] for c in categories if len(c) > level}) > 1:
            return level
    return depth


def category_tags(categories: Sequence[Sequence[str]], num_levels: int, level_offset: int = -1) -> CategoryTags:
    """Maps category paths (coarse -> fine) to integer tags: RQ layer ``l`` gets path level
    ``level_offset + l``, a tag being the path prefix up to that level. ``level_offset=-1`` skips
    the constant leading levels (``constant_root_levels``): on Amazon data the root is one
    category for all items, which is why SPEC pairs layer ``l`` with level ``l + 1``."""
    offset = constant_root_levels(categories) if level_offset < 0 else level_offset
    ids = np.full((len(categories), num_levels), -1, np.int32)
    vocab = []
    for layer in range(num_levels):
        level = offset + layer
        prefixes = [tuple(c[:level + 1]) if len(c) > level else None for c in categories]
        names = sorted({p for p in prefixes if p is not None})
        index = {p: i for i, p in enumerate(names)}
        ids[:, layer] = [index[p] if p is not None else -1 for p in prefixes]
        vocab.append(names)
    return CategoryTags(ids, vocab, offset)


def tag_text_embeddings(text: np.ndarray, tag_ids: np.ndarray, num_tags: Sequence[int]) -> list[np.ndarray]:
    """Per layer ``[num_tags_l, D]``: the mean L2-normalised text embedding of each tag's items."""
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    tables = []
    for layer, n in enumerate(num_tags):
        ids = tag_ids[:, layer]
        keep = ids >= 0
        sums = np.zeros((n, text.shape[1]), np.float64)
        np.add.at(sums, ids[keep], unit[keep])
        counts = np.bincount(ids[keep], minlength=n)[:, None]
        tables.append((sums / np.maximum(counts, 1)).astype(np.float32))
    return tables


def category_purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Over items with a label (>= 0): fraction whose label is the majority label of their code.
    1.0 when every code holds one category; a code shared by categories counts its minority items
    as impure. Codes with more categories than items are not penalised, so compare tokenizers at
    equal codebook size."""
    codes, labels = np.asarray(codes), np.asarray(labels)
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    codes, labels = codes[keep], labels[keep]
    table = np.zeros((codes.max() + 1, labels.max() + 1), np.int64)
    np.add.at(table, (codes, labels), 1)
    return float(table.max(1).sum() / len(codes))


# ----------------------------------------------------------------------------- modules


def norm_mlp(hidden_dims: Sequence[int], out_dim: int, dropout: float = 0.0, **kwargs) -> rq_vae.MLP:
    """``rq_vae.MLP`` with ``Dense → LayerNorm → ReLU → Dropout`` hidden layers (the PSQ's blocks)."""
    return rq_vae.MLP(tuple(hidden_dims), out_dim, dropout, layer_norm=True, **kwargs)


class DualDecoder(nn.Module):
    """Shared trunk, then one head per modality: ``z_q → (ê_text, ê_cf)``."""

    trunk_dims: Sequence[int]
    text_dim: int
    cf_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        h = z
        for dim in self.trunk_dims:
            h = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.LayerNorm()(nn.Dense(dim)(h))))
        text = norm_mlp((2 * self.text_dim,), self.text_dim, name="text_head")(h, train)
        cf = norm_mlp((max(256, 4 * self.cf_dim),), self.cf_dim, name="cf_head")(h, train)
        return text, cf


class SemanticAnchors(nn.Module):
    """HSA's soft anchoring of each layer's codebook to its projected tag table (see module doc)."""

    num_tags: tuple[int, ...]
    tag_dim: int
    code_dim: int
    learned_tags: bool = False
    temperature: float = 0.15
    distance_weight: float = 1.0
    kl_weight: float = 0.5
    ema_decay: float = 0.98
    target_entropy_ratio: float = 0.35
    scale_min: float = 0.25
    scale_max: float = 1.5

    @nn.compact
    def __call__(self, codebooks: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        total, metrics = jnp.zeros(()), {}
        for layer, n in enumerate(self.num_tags):
            if n == 0:
                continue
            name = f"tags_l{layer}"
            if self.learned_tags:
                tags = self.param(name, nn.initializers.normal(1.0), (n, self.tag_dim))
            else:
                tags = self.variable("constants", name, jnp.zeros, (n, self.tag_dim)).value
            proj = norm_mlp((2 * self.code_dim,), self.code_dim, name=f"proj_l{layer}")(tags)
            codebook = codebooks[layer]
            dist = jnp.sqrt(jnp.maximum(squared_distances(proj, codebook), 1e-12))
            probs = jax.nn.softmax(-dist / self.temperature, axis=-1)
            ema = self.variable("hsa_ema", f"assign_l{layer}", jnp.zeros, probs.shape)
            started = self.variable("hsa_ema", f"started_l{layer}", lambda: jnp.zeros((), bool))
            current = jax.lax.stop_gradient(probs)
            mixed = jnp.where(started.value, self.ema_decay * ema.value + (1 - self.ema_decay) * current, current)
            if train and not self.is_initializing():
                ema.value, started.value = mixed, jnp.ones((), bool)
            target = mixed / (mixed.sum(-1, keepdims=True) + _EPS)
            target = jnp.maximum(target, _EPS)
            kl = (target * (jnp.log(target) - jnp.log(probs + _EPS))).sum() / n
            diff = jnp.abs(probs @ codebook - proj)
            smooth_l1 = jnp.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5).mean()
            entropy = -(probs * jnp.log(probs + _EPS)).sum(-1).mean()
            target_entropy = self.target_entropy_ratio * np.log(codebook.shape[0])
            scale = jax.lax.stop_gradient(jnp.clip(target_entropy / (entropy + _EPS), self.scale_min, self.scale_max))
            total = total + scale * (self.distance_weight * smooth_l1 + self.kl_weight * kl)
            metrics |= {f"anchor_smooth_l1_l{layer}": smooth_l1, f"anchor_kl_l{layer}": kl,
                        f"anchor_entropy_l{layer}": entropy, f"anchor_scale_l{layer}": scale}
        return {"anchor_loss": total} | metrics


class PrismQuantizer(nn.Module):
    """The PSQ over ``x = [e_text ; e_cf]`` (``text_dim`` + ``cf_dim`` columns). ``aux`` carries
    ``popularity`` ``[B]`` in [0, 1] (for ACD) and ``tags`` ``[B, L]`` int (-1 = none; for HSA).
    Honours the ``rq_vae_training.fit_rq_vae`` module contract."""

    config: PrismConfig
    text_dim: int
    cf_dim: int
    num_tags: tuple[int, ...] = ()
    tag_dim: int = 0
    learned_tags: bool = False

    def setup(self):
        c = self.config
        if c.acd:
            self.gate_mlp = norm_mlp((c.gate_hidden,), self.cf_dim, c.gate_dropout)
            self.fusion_norm = nn.LayerNorm()
        self.encoder = norm_mlp(c.hidden_dims, c.code_dim, c.dropout)
        self.quantizer = rq_vae.ResidualQuantizer(c.num_levels, c.codebook_size, c.code_dim, c.beta)
        self.decoder = DualDecoder(tuple(reversed(c.hidden_dims)), self.text_dim, self.cf_dim, c.dropout)
        if c.hsa:
            if len(self.num_tags) != c.num_levels:
                raise ValueError(f"hsa needs num_tags for each of {c.num_levels} layers, got {self.num_tags}")
            self.anchors = SemanticAnchors(
                self.num_tags, self.tag_dim, c.code_dim, self.learned_tags, c.anchor_temperature,
                c.anchor_distance_weight, c.anchor_kl_weight, c.anchor_ema_decay,
                c.anchor_target_entropy_ratio, c.anchor_scale_min, c.anchor_scale_max)
            self.classifiers = [self._classifier(layer, n) for layer, n in enumerate(self.num_tags) if n > 0]

    def _classifier(self, layer: int, n: int) -> rq_vae.MLP:
        c = self.config
        width = c.code_dim * (layer + 1)
        hidden = c.class_hidden or max(2 * width, 128)
        return norm_mlp((hidden, hidden // 2), n, c.class_dropout)

    def _inputs(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Encoder input ``fused``, gate ``[B, d_cf]`` (ones without ACD) and reconstruction targets."""
        c = self.config
        text, cf_raw = x[:, :self.text_dim], x[:, self.text_dim:]
        if x.shape[1] != self.text_dim + self.cf_dim:
            raise ValueError(f"x has {x.shape[1]} columns; expected text {self.text_dim} + cf {self.cf_dim}")
        text_in = l2_normalize(text) if c.normalize_input else text
        cf_in = l2_normalize(cf_raw) if c.normalize_input else cf_raw
        if not c.acd:
            return {"fused": jnp.concatenate([text_in, cf_in], -1), "gate": jnp.ones_like(cf_in),
                    "text_target": text_in, "cf_target": cf_in}
        gate = nn.sigmoid(self.gate_mlp(cf_raw, train))
        weighted = gate * cf_in
        fused = self.fusion_norm(jnp.concatenate([text_in, weighted], -1))
        return {"fused": fused, "gate": gate, "text_target": text_in, "cf_target": weighted}

    def latent(self, x: jax.Array, aux: dict | None = None, train: bool = False) -> jax.Array:
        return self.encoder(self._inputs(x, train)["fused"], train)

    def quantize(self, x: jax.Array, aux: dict | None = None) -> dict[str, jax.Array]:
        """Codes etc. as ``RQVAE.quantize``, plus each item's mean ACD gate as an item output."""
        inputs = self._inputs(x)
        z = self.encoder(inputs["fused"], False)
        return {"z": z, "item_outputs": {"gate_mean": inputs["gate"].mean(-1)}} | self.quantizer(z)

    def __call__(self, x: jax.Array, aux: dict | None = None, train: bool = False) -> dict[str, jax.Array]:
        c = self.config
        aux = aux or {}
        inputs = self._inputs(x, train)
        z = self.encoder(inputs["fused"], train)
        out = {"z": z} | self.quantizer(z)
        text_hat, cf_hat = self.decoder(out["z_q"], train)
        recon_text = rq_vae.reconstruction_loss(inputs["text_target"], text_hat, c.recon_loss)
        recon_cf = rq_vae.reconstruction_loss(inputs["cf_target"], cf_hat, c.recon_loss)
        recon = c.text_recon_weight * recon_text + c.cf_recon_weight * recon_cf
        quant = out["level_losses"].sum() / (c.code_dim if c.quant_loss_reduction == "mean" else 1)
        loss = recon + quant
        metrics = {"recon_loss": recon, "recon_text": recon_text, "recon_cf": recon_cf, "quant_loss": quant,
                   "latent_norm": jnp.linalg.norm(z, axis=-1).mean()}
        if c.acd:
            gate_terms = self._gate_loss(inputs["gate"], aux["popularity"])
            loss = loss + c.acd_weight * gate_terms["gate_loss"]
            metrics |= gate_terms
        if c.hsa:
            hsa_terms = self._hsa_loss(out, aux["tags"], train)
            loss = loss + c.hsa_weight * hsa_terms["hsa_loss"]
            metrics |= hsa_terms
        return out | metrics | {"recon_text_hat": text_hat, "recon_cf_hat": cf_hat, "loss": loss}

    def _gate_loss(self, gate: jax.Array, popularity: jax.Array) -> dict[str, jax.Array]:
        c = self.config
        mean_gate = gate.mean(-1)
        mse = ((mean_gate - popularity.astype(mean_gate.dtype)) ** 2).mean()
        var = mean_gate.var()
        floor = nn.relu(c.gate_var_floor - var)
        return {"gate_loss": mse + c.gate_var_weight * floor, "gate_mse": mse, "gate_var": var,
                "gate_var_penalty": floor, "gate_mean": mean_gate.mean()}

    def _hsa_loss(self, out: dict[str, jax.Array], tags: jax.Array, train: bool) -> dict[str, jax.Array]:
        codebooks = self.variables["params"]["quantizer"]["codebooks"]
        anchors = self.anchors(codebooks, train)
        # Chosen code vectors, with a straight-through path to the residual (the encoder).
        residuals = out["residuals"]
        codes_st = out["quantized"] + residuals - jax.lax.stop_gradient(residuals)
        layer_losses, present, metrics = [], [], {}
        heads = iter(self.classifiers)
        for layer, n in enumerate(self.num_tags):
            if n == 0:
                continue
            logits = next(heads)(codes_st[:, :layer + 1].reshape(codes_st.shape[0], -1), train)
            labels = tags[:, layer]
            valid = labels >= 0
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None], -1)[:, 0]
            count = valid.sum()
            layer_losses.append(jnp.where(valid, ce, 0.0).sum() / jnp.maximum(count, 1))
            present.append(count > 0)
            correct = jnp.where(valid, logits.argmax(-1) == labels, False).sum()
            metrics[f"class_acc_l{layer}"] = correct / jnp.maximum(count, 1)
        if layer_losses:
            present = jnp.stack(present).astype(jnp.float32)
            class_loss = (jnp.stack(layer_losses) * present).sum() / jnp.maximum(present.sum(), 1.0)
        else:
            class_loss = jnp.zeros(())
        hsa = anchors["anchor_loss"] + self.config.class_weight * class_loss
        return anchors | metrics | {"class_loss": class_loss, "hsa_loss": hsa}


def build_prism_quantizer(config: PrismConfig, text_dim: int, cf_dim: int,
                          num_tags: Sequence[int] = ()) -> PrismQuantizer:
    learned = config.tag_embedding == "learned"
    config = dataclasses.replace(config, hidden_dims=tuple(config.hidden_dims))
    tags = tuple(int(n) for n in num_tags) if config.hsa else ()
    tag_dim = (config.learned_tag_dim if learned else text_dim) if config.hsa else 0
    return PrismQuantizer(config=config, text_dim=text_dim, cf_dim=cf_dim, num_tags=tags, tag_dim=tag_dim,
                          learned_tags=learned)


# ----------------------------------------------------------------------------- fitting


@dataclasses.dataclass
class PrismResult:
    codes: np.ndarray  # int32 [N, L]
    codebooks: np.ndarray  # [L, K, code_dim]
    latents: np.ndarray  # [N, code_dim]
    loss_history: list[dict[str, float]]
    gate_mean: np.ndarray | None  # [N] per-item mean gate (ACD on), else None
    params: Any
    collections: dict  # hsa_ema (EMA of tag->code assignments) and constants (tag tables)
    num_tags: tuple[int, ...]
    fit_seconds: float


def fit_prism_quantizer(text: np.ndarray, cf: np.ndarray, popularity: np.ndarray | None = None,
                        tags: np.ndarray | None = None, config: PrismConfig = PrismConfig(), *,
                        num_tags: Sequence[int] | None = None, tag_tables: Sequence[np.ndarray] | None = None,
                        log_every: int = 100) -> PrismResult:
    """Trains the PSQ on item embeddings and tokenizes every item.

    ``text [N, Dt]``, ``cf [N, Dc]``; ``popularity [N]`` in [0, 1] (``popularity_scores`` of the
    training interaction counts; needed when ``config.acd``); ``tags [N, L]`` int, -1 = none
    (``category_tags(...).ids``; needed when ``config.hsa``); ``num_tags`` the vocabulary size per
    layer (default: ``tags.max(0) + 1``); ``tag_tables`` overrides the fixed per-layer tag
    embeddings (default with ``tag_embedding='mean_text'``: ``tag_text_embeddings``)."""
    tic = time.time()
    text, cf = np.asarray(text, np.float32), np.asarray(cf, np.float32)
    n = len(text)
    if len(cf) != n:
        raise ValueError(f"text has {n} items but cf has {len(cf)}")
    aux: dict[str, np.ndarray] = {}
    if config.acd:
        if popularity is None:
            raise ValueError("acd needs per-item popularity")
        aux["popularity"] = np.asarray(popularity, np.float32)
    variables = None
    if config.hsa:
        if tags is None:
            raise ValueError("hsa needs per-item category tags")
        tags = np.asarray(tags, np.int32)
        if tags.shape != (n, config.num_levels):
            raise ValueError(f"tags must have shape {(n, config.num_levels)}, got {tags.shape}")
        num_tags = tuple(int(v) for v in (num_tags if num_tags is not None else
                                          np.maximum(tags.max(0, initial=-1) + 1, 0)))
        aux["tags"] = tags
        if config.tag_embedding == "mean_text":
            tables = tag_tables if tag_tables is not None else tag_text_embeddings(text, tags, num_tags)
            variables = {"constants": {"anchors": {f"tags_l{l}": np.asarray(t, np.float32)
                                                   for l, t in enumerate(tables) if num_tags[l] > 0}}}
    else:
        num_tags = ()
    module = build_prism_quantizer(config, text.shape[1], cf.shape[1], num_tags)
    x = np.concatenate([text, cf], axis=1)
    result = fit_rq_vae(x, config, module=module, aux=aux, variables=variables,
                               log_every=log_every)
    gate = result.item_outputs["gate_mean"] if config.acd else None
    return PrismResult(codes=result.codes, codebooks=result.codebooks, latents=result.latents,
                       loss_history=result.loss_history, gate_mean=gate, params=result.params,
                       collections=result.collections, num_tags=tuple(num_tags), fit_seconds=time.time() - tic)
