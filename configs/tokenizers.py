"""Defaults of ``config.tokenizer``: which tokenizer, its input, collision handling, health limits."""

import dataclasses

import ml_collections

from gr_jax.tokenizers.health import HealthThresholds
from gr_jax.tokenizers.pctx_tokenizer import PctxConfig
from gr_jax.tokenizers.prism_quantizer import PrismConfig
from gr_jax.tokenizers.rq_kmeans import RQKMeansConfig
from gr_jax.tokenizers.rq_vae import RQVAEConfig


def tokenizer_config(name: str = "rq_vae", embeddings: str = "text") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name  # rq_vae | rq_kmeans | prism | pctx | index_json
    c.input = embeddings  # text | cf | text+cf (features stage outputs); prism always reads text and cf
    c.collisions = "dedup_digit"  # dedup_digit (extra digit) | reassign (min-cost last level) | none
    c.index_json = ""  # tokenizer.name=index_json: an LC-Rec NAME.index.json to import
    c.rq_vae = ml_collections.ConfigDict(dataclasses.asdict(RQVAEConfig()))
    c.rq_kmeans = ml_collections.ConfigDict(dataclasses.asdict(RQKMeansConfig()))
    # PRISM's purified semantic quantizer (ACD gate + HSA anchors; every knob, paper defaults). Ablations:
    # --config.tokenizer.prism.acd=False / .hsa=False; λ_ACD = prism.acd_weight, λ_HSA = prism.hsa_weight.
    c.prism = ml_collections.ConfigDict(dataclasses.asdict(PrismConfig()))
    # Pctx's personalized tokenizer (reads the features stage's event contexts and text). Ablations:
    # .personalized=False (one SID per item), .merge_threshold=0 (no merging of rare SIDs).
    c.pctx = ml_collections.ConfigDict(dataclasses.asdict(PctxConfig()))
    c.health = ml_collections.ConfigDict(
        {k: (-1.0 if v is None else float(v)) for k, v in dataclasses.asdict(HealthThresholds()).items()})
    c.health.enforce = True  # fail the stage when a limit is violated (a negative limit disables it)
    return c


def shrink_for_tiny(c: ml_collections.ConfigDict) -> None:
    """Codebooks sized for the ~100-item tiny catalogue, with matching health limits."""
    for sub in (c.rq_vae, c.prism):
        sub.update(codebook_size=16, num_epochs=150, batch_size=64, reset_every=10, hidden_dims=(64, 32), code_dim=8)
    c.rq_kmeans.codebook_size = 16
    c.pctx.update(codebook_size=16, context_pca_dim=8, text_pca_dim=16)
    c.health.min_usage = 0.5
    c.health.max_energy_ratio = -1.0
    c.health.max_collision_rate = -1.0
