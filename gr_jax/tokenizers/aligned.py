"""Semantic Convergence's Alignment Tokenization (SPEC §5): an RQ-VAE whose codes are pulled
toward the LLM's token-embedding space.

The RQ-VAE (``rq_vae``, trained by ``rq_vae_training.fit_rq_vae``) quantizes the collaborative
item embeddings with ``L`` cascaded codebooks. One learned linear map ``P`` (``align_proj``,
``code_dim -> D_llm``, no bias) sends each level's cumulative code embedding
``c_{<=l} = sum_{j<=l} c_j`` toward the item's target, its text embedded in the LLM's
token-embedding space: the loss adds ``align_weight * mean_l mean_batch (1 - cos(P c_{<=l}, t))``.

The alignment term reaches the codebooks (through the chosen codewords) and ``P`` only, not the
encoder: the latent stays a reconstruction code of the CF embedding, and the alignment moves the
codewords -- and through them which items share a code -- rather than the items themselves.

After training, ``P`` applied to every codeword gives ``code_token_embeddings [L, K, D_llm]``, an
initialisation for the LLM's code-token rows: by linearity an item's rows summed over levels
``0..l`` are ``P c_{<=l}``. The stage stores them as ``WORKDIR/tokenize/code_token_embeddings.npy``.
They cover the ``L`` quantized levels only: with ``tokenizer.collisions='dedup_digit'`` the SID
table's extra de-dup level has no embedding here (with ``'reassign'`` the SIDs keep ``L`` levels
and every reassigned last code is one of the ``K`` embedded codewords).
"""

from __future__ import annotations

import dataclasses
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gr_jax.ops import squared_distances
from gr_jax.tokenizers.configs import AlignedConfig
from gr_jax.tokenizers.rq_vae import RQVAE, Outputs, build_rq_vae
from gr_jax.tokenizers.rq_vae_training import fit_rq_vae, init_params, quantize_all

CODE_TOKEN_EMBEDDINGS_FILE = "code_token_embeddings.npy"


def alignment_cosines(quantized: jax.Array, proj: jax.Array, targets: jax.Array) -> jax.Array:
    """``cos(P c_{<=l}, t)`` ``[N, L]`` for the chosen codewords ``quantized [N, L, d]``,
    ``proj [d, D]`` and ``targets [N, D]``. Computed in the code space (``c . P t`` and
    ``c^T P P^T c``), so no ``[N, L, D]`` tensor is formed."""
    cumulative = jnp.cumsum(quantized, axis=1)
    dot = jnp.einsum("nld,nd->nl", cumulative, targets @ proj.T)
    squared_norm = jnp.einsum("nld,de,nle->nl", cumulative, proj @ proj.T, cumulative)
    target_norm = jnp.linalg.norm(targets, axis=-1, keepdims=True)
    return dot / (jnp.sqrt(jnp.maximum(squared_norm, 1e-24)) * jnp.maximum(target_norm, 1e-12))


class AlignedRQVAE(RQVAE):
    """``RQVAE`` plus ``align_proj [code_dim, target_dim]``; ``aux["target"] [B, target_dim]`` holds
    the items' alignment targets. A subclass rather than a wrapper so that the codebooks stay at
    ``params["quantizer"]["codebooks"]`` (the ``fit_rq_vae`` contract)."""

    target_dim: int = 0
    align_weight: float = 1.0

    def setup(self):
        super().setup()
        self.align_proj = self.param("align_proj", nn.initializers.lecun_normal(), (self.code_dim, self.target_dim))

    def __call__(self, x: jax.Array, aux: dict | None = None, train: bool = False) -> Outputs:
        out = super().__call__(x, aux, train)
        cosines = alignment_cosines(out["quantized"], self.align_proj, aux["target"])
        align_loss = (1.0 - cosines).mean()
        per_level = {f"align_cosine_l{l}": cosines[:, l].mean() for l in range(self.num_levels)}
        return out | per_level | {"align_loss": align_loss, "loss": out["loss"] + self.align_weight * align_loss}


def build_aligned(config: AlignedConfig, input_dim: int, target_dim: int) -> AlignedRQVAE:
    """The RQ-VAE ``build_rq_vae`` makes from ``config``, with the projection to ``target_dim``."""
    base = build_rq_vae(config, input_dim)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(RQVAE) if f.name not in ("parent", "name")}
    return AlignedRQVAE(**fields, target_dim=target_dim, align_weight=config.align_weight)


@dataclasses.dataclass
class AlignedFit:
    """What ``fit_aligned`` hands to the tokenize stage (fields as ``TokenizerFit``'s sources)."""

    codes: np.ndarray  # int32 [N, L]
    codebooks: np.ndarray  # [L, K, code_dim]
    latents: np.ndarray  # [N, code_dim]
    align_proj: np.ndarray | None  # [code_dim, D_llm]; None when align_weight == 0
    loss_history: list[dict[str, float]]
    info: dict  # final_loss, fit_seconds, align_weight, align_cosine[_init]_l{l} (alignment on)

    def last_level_costs(self) -> np.ndarray:
        """``[N, K]`` squared distance from each item's residual entering the last level to every
        last-level codeword (for ``collisions.reassign_last_level``)."""
        levels = np.arange(self.codes.shape[1] - 1)
        residual = self.latents - self.codebooks[levels, self.codes[:, :-1]].sum(1)
        return np.asarray(squared_distances(jnp.asarray(residual), jnp.asarray(self.codebooks[-1])))


def code_token_embeddings(codebooks: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """``P`` applied to every codeword: float32 ``[L, K, D_llm]``."""
    return np.einsum("lkd,de->lke", codebooks, proj).astype(np.float32)


def _cosine_info(codes: np.ndarray, codebooks: np.ndarray, proj: np.ndarray, targets: np.ndarray,
                 suffix: str = "") -> dict[str, float]:
    chosen = codebooks[np.arange(codes.shape[1]), codes]
    cosines = np.asarray(alignment_cosines(chosen, proj, targets)).mean(0)
    return {f"align_cosine{suffix}_l{l}": float(c) for l, c in enumerate(cosines)}


def fit_aligned(x: np.ndarray, targets: np.ndarray | None, config: AlignedConfig, *,
                log_every: int = 100) -> tuple[AlignedFit, np.ndarray | None]:
    """Trains the aligned RQ-VAE on item embeddings ``x [N, D]`` toward ``targets [N, D_llm]`` and
    tokenizes every item; returns the fit and ``code_token_embeddings [L, K, D_llm]``.

    ``info`` reports the mean cosine of ``P c_{<=l}`` to the targets over all items after training
    (``align_cosine_l{l}``) and at initialisation (``align_cosine_init_l{l}``: random ``P``,
    k-means codebooks). With ``align_weight == 0`` this is ``fit_rq_vae(x, config)`` exactly
    (``targets`` unused, may be None) and the embeddings are None."""
    tic = time.time()
    x = np.asarray(x, np.float32)
    if config.align_weight == 0:
        result = fit_rq_vae(x, config, log_every=log_every)
        info = {"final_loss": result.loss_history[-1], "fit_seconds": time.time() - tic, "align_weight": 0.0}
        return AlignedFit(result.codes, result.codebooks, result.latents, None, result.loss_history, info), None
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or len(targets) != len(x):
        raise ValueError(f"targets must have shape [{len(x)}, D_llm], got {targets.shape}")
    module = build_aligned(config, x.shape[1], targets.shape[1])
    aux = {"target": targets}
    init = init_params(module, config, x, aux, jax.random.PRNGKey(config.seed), np.random.default_rng(config.seed))
    init_codes = quantize_all(module, init, x, aux, config.encode_batch_size)["codes"]
    before = _cosine_info(init_codes, np.asarray(init["quantizer"]["codebooks"]), np.asarray(init["align_proj"]),
                          targets, "_init")
    result = fit_rq_vae(x, config, module=module, aux=aux, init=init, log_every=log_every)
    proj = np.asarray(result.params["align_proj"])
    after = _cosine_info(result.codes, result.codebooks, proj, targets)
    info = {"final_loss": result.loss_history[-1], "fit_seconds": time.time() - tic,
            "align_weight": config.align_weight} | after | before
    fit = AlignedFit(result.codes, result.codebooks, result.latents, proj, result.loss_history, info)
    return fit, code_token_embeddings(result.codebooks, proj)


def save_code_token_embeddings(tokenize_dir: str, embeddings: np.ndarray | None) -> str | None:
    """Writes ``code_token_embeddings.npy`` (or, for None, removes a stale one); returns its path or None."""
    path = os.path.join(tokenize_dir, CODE_TOKEN_EMBEDDINGS_FILE)
    if embeddings is None:
        if os.path.exists(path):
            os.remove(path)
        return None
    os.makedirs(tokenize_dir, exist_ok=True)
    np.save(path, np.asarray(embeddings, np.float32))
    return path


def load_code_token_embeddings(tokenize_dir: str) -> np.ndarray | None:
    """The ``[L, K, D_llm]`` code-token embeddings a tokenize stage with ``tokenizer.name='aligned'``
    wrote (row ``[l, k]`` = ``P`` of codeword ``k`` of level ``l``; quantized levels only, no de-dup
    digit), or None when it wrote none (another tokenizer, or ``align_weight=0``)."""
    path = os.path.join(tokenize_dir, CODE_TOKEN_EMBEDDINGS_FILE)
    return np.load(path) if os.path.exists(path) else None
