"""``config.tokenizer``: the one tokenizer a system uses, its input, collision handling and health limits."""

import dataclasses

import ml_collections

from gr_jax.tokenizers.configs import (
    AlignedConfig,
    HealthThresholds,
    PctxConfig,
    PrismConfig,
    RQKMeansConfig,
    RQVAEConfig,
)

SETTINGS = {"rq_vae": RQVAEConfig, "rq_kmeans": RQKMeansConfig, "prism": PrismConfig, "pctx": PctxConfig,
            "aligned": AlignedConfig}


def tokenizer_config(name: str, embeddings: str = "text") -> ml_collections.ConfigDict:
    """The section of tokenizer ``name`` (rq_vae | rq_kmeans | prism | pctx | aligned) with its paper defaults."""
    c = ml_collections.ConfigDict()
    c.name = name  # this tokenizer, or index_json to train on imported SIDs
    c.input = embeddings  # text | cf | text+cf (features outputs); prism reads text and cf; aligned also llm_text
    c.collisions = "dedup_digit"  # dedup_digit (extra digit) | reassign (min-cost last level) | none
    c.index_json = ""  # tokenizer.name=index_json: an LC-Rec NAME.index.json to import
    c.index_json_codebook_size = 0  # codes per level of the imported SIDs; 0 = the largest code + 1
    c[name] = ml_collections.ConfigDict(dataclasses.asdict(SETTINGS[name]()))
    c.health = ml_collections.ConfigDict(
        {k: (-1.0 if v is None else float(v)) for k, v in dataclasses.asdict(HealthThresholds()).items()})
    c.health.enforce = True  # fail the stage when a limit is violated (a negative limit disables it)
    return c


def shrink_for_tiny(c: ml_collections.ConfigDict) -> None:
    """Codebooks sized for the ~100-item tiny catalogue, with matching health limits."""
    settings = c[c.name]
    settings.codebook_size = 16
    if c.name in ("rq_vae", "prism", "aligned"):
        settings.update(num_epochs=150, batch_size=64, reset_every=10, hidden_dims=(64, 32), code_dim=8)
    elif c.name == "pctx":
        settings.update(context_pca_dim=8, text_pca_dim=16)
    c.health.min_usage = 0.5
    c.health.max_energy_ratio = -1.0
    c.health.max_collision_rate = -1.0
