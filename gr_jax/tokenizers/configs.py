"""Settings of every tokenizer and of the codebook health checks, with the papers' defaults.

``configs/*.py`` turn these structs into ``config.tokenizer`` sections and the tokenize stage turns
the sections back into them; their checks name the field and its valid values. Importing this
module needs no JAX, so loading a config does not either.
"""

from __future__ import annotations

import dataclasses

from gr_jax.config_schema import check_choice


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
    """TIGER architecture and loss; the optimizer (Adagrad in TIGER) is configurable.

    ``reset_every=0`` disables dead-code resets; otherwise codes unused over the last
    ``reset_every`` steps are reset. Its CPU cost on Scientific: BENCHMARKS.md, codebook health."""

    hidden_dims: tuple[int, ...] = (512, 256, 128)
    code_dim: int = 32
    num_levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25
    optimizer: str = "adamw"  # adamw | adam | adagrad | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    num_epochs: int = 200
    dropout: float = 0.0
    reset_every: int = 50
    seed: int = 0
    kmeans_init: bool = True
    kmeans_init_samples: int = 8192
    kmeans_iters: int = 25
    normalize_input: bool = False
    recon_loss: str = "mse"  # mse | cosine
    encode_batch_size: int = 4096

    def __post_init__(self):
        check_choice("optimizer", self.optimizer)
        check_choice("recon_loss", self.recon_loss)


@dataclasses.dataclass(frozen=True)
class AlignedConfig(RQVAEConfig):
    """Semantic Convergence's Alignment Tokenization (``tokenizers.aligned``): the RQ-VAE's fields
    (SPEC §5: 4 cascaded codebooks) plus the weight of the LLM alignment loss; ``align_weight=0``
    is the "without alignment" ablation (a plain RQ-VAE fit, no projection trained)."""

    num_levels: int = 4
    codebook_size: int = 256
    align_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.align_weight < 0:
            raise ValueError(f"align_weight={self.align_weight}; it must be at least 0")


@dataclasses.dataclass(frozen=True)
class RQKMeansConfig:
    """Residual k-means settings; level ``l`` uses seed ``seed + l``."""

    num_levels: int = 3
    codebook_size: int = 256
    residual: str = "euclidean"  # "euclidean" or "tangent"
    balanced: bool = False
    num_iters: int = 50
    normalize_input: bool = True  # L2-normalize each input row before quantizing
    seed: int = 0
    chunk_size: int = 0  # > 0: each level's k-means streams chunks of this many points over the local devices

    def __post_init__(self):
        check_choice("residual", self.residual)
        if self.chunk_size and self.balanced:
            raise ValueError("rq_kmeans.balanced needs the in-memory k-means: set rq_kmeans.chunk_size=0")
        if self.num_levels < 1 or self.codebook_size < 1 or self.num_iters < 0:
            raise ValueError(f"need num_levels >= 1, codebook_size >= 1 and num_iters >= 0, got {self}")

    @property
    def tangent(self) -> bool:
        return self.residual == "tangent"


@dataclasses.dataclass(frozen=True)
class PrismConfig(RQVAEConfig):
    """Every knob of the PSQ, paper / SPEC defaults: the RQ-VAE's architecture and training fields
    (SPEC: 3 x 256, code dim 32, beta 0.25) plus the fields below. ``acd`` and ``hsa`` switch the
    modules independently; with both off the model is an RQ-VAE on ``[e_text ; e_cf]`` with dual heads."""

    dropout: float = 0.1  # encoder/decoder hidden layers
    normalize_input: bool = True  # L2-normalise e_text and e_cf before fusion and as targets
    recon_loss: str = "cosine"  # cosine | mse, per decoder head
    text_recon_weight: float = 1.0
    cf_recon_weight: float = 1.0
    # Per level ||sg(r) - c||^2 + beta ||r - sg(c)||^2, averaged over the code dimension (mean, as the authors'
    # F.mse_loss) or summed (sum, as rq_vae). With the LayerNorm encoder (latent norm ~4) and cosine
    # reconstruction, sum outweighs the reconstruction ~30x and the codes collapse (measured on Scientific).
    quant_loss_reduction: str = "mean"  # mean | sum
    # ACD: gate g = sigmoid(MLP(e_cf)), z = LN([e_text ; g * e_cf]), popularity supervision.
    acd: bool = True
    gate_hidden: int = 128
    gate_dropout: float = 0.2
    acd_weight: float = 0.8  # lambda_ACD
    gate_var_floor: float = 0.04  # ReLU(floor - Var(mean gate))
    gate_var_weight: float = 0.5
    # HSA: anchors per RQ layer (layer l <-> category level l + 1) and tag classification.
    hsa: bool = True
    hsa_weight: float = 0.2  # lambda_HSA
    tag_level_offset: int = -1  # path index of layer 0's tags; -1: skip leading levels with one value
    tag_embedding: str = "mean_text"  # mean_text (mean item text per tag, fixed) | learned
    learned_tag_dim: int = 64  # tag_embedding=learned: width of the trainable tag tables
    anchor_temperature: float = 0.15
    anchor_distance_weight: float = 1.0  # SmoothL1 term
    anchor_kl_weight: float = 0.5
    anchor_ema_decay: float = 0.98
    anchor_target_entropy_ratio: float = 0.35  # target entropy = ratio * log K
    anchor_scale_min: float = 0.25
    anchor_scale_max: float = 1.5
    class_weight: float = 1.0  # classification loss inside L_HSA
    class_hidden: int = 0  # 0: max(2 * input width, 128)
    class_dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        check_choice("quant_loss_reduction", self.quant_loss_reduction)
        check_choice("tag_embedding", self.tag_embedding)


@dataclasses.dataclass(frozen=True)
class PctxConfig:
    """Every knob of the personalized tokenizer; defaults are the paper's Scientific settings."""

    personalized: bool = True  # False: one centroid (one SID) per item, the static ablation
    num_groups: int = 10  # T quantile groups of interaction counts
    first_centroids: int = 2  # centroids of group 0 ("start")
    centroid_step: int = 3  # extra centroids per group ("d")
    gamma_shape: float = 4.5  # k of the gamma pdf giving the group shares
    kmeans_iters: int = 30
    context_pca_dim: int = 64
    text_pca_dim: int = 128
    alpha: float = 0.5  # weight of the context part of the fused vector
    num_levels: int = 3
    codebook_size: int = 256
    rq_iters: int = 50
    merge_threshold: float = 0.2  # tau; 0 keeps every SID (the no-merging ablation)
    seed: int = 0

    def __post_init__(self):
        if self.num_groups < 1 or self.first_centroids < 1 or self.centroid_step < 0:
            raise ValueError(f"need num_groups >= 1, first_centroids >= 1, centroid_step >= 0; got {self}")
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.merge_threshold < 1.0:
            raise ValueError(f"need alpha in [0, 1] and merge_threshold in [0, 1); got {self}")


@dataclasses.dataclass(frozen=True)
class HealthThresholds:
    """Limits for ``check_health``; None disables a check."""

    min_usage: float | None = 0.9
    min_perplexity_fraction: float | None = 0.1  # perplexity / K
    max_energy_ratio: float | None = 0.8
    max_collision_rate: float | None = 0.1
    max_recon_error: float | None = None
    max_count_cv: float | None = None
