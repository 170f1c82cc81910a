"""The RQ-VAE semantic-ID model of TIGER (Rajput et al., 2023); fitting it: ``rq_vae_training``.

An MLP encoder maps an item's content embedding to a latent ``z``; a residual quantizer
with ``L`` codebooks picks, level by level, the code nearest to the current residual; the
codes ``(c_1, ..., c_L)`` are the item's semantic ID. A mirrored MLP decoder reconstructs
the input from the straight-through quantized latent. Training loss: reconstruction
(squared error summed over features, or cosine) plus, per level,
``||sg(r_l) - c_l||^2 + beta ||r_l - sg(c_l)||^2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.ops import l2_normalize, squared_distances
from gr_jax.tokenizers.configs import RQVAEConfig

Outputs = dict[str, jax.Array]


def residual_quantize(z: jax.Array, codebooks: jax.Array, beta: float = 0.25) -> Outputs:
    """Nearest-code residual quantization of ``z [B, d]`` by ``codebooks [L, K, d]``.

    Returns ``codes [B, L]``, straight-through ``z_q [B, d]``, the residual entering each
    level ``residuals [B, L, d]``, the chosen codes ``quantized [B, L, d]``, squared
    distances ``distances [B, L, K]`` (differentiable in residuals and codebooks, for soft
    assignments) and per-level losses ``level_losses [L]``. Residuals are propagated with
    ``sg(c_l)``, so each codebook is trained only by its own level's term.
    """
    residual = z
    codes, residuals, quantized, distances, losses = [], [], [], [], []
    for codebook in codebooks:
        dist = squared_distances(residual, codebook)
        code = jnp.argmin(dist, axis=-1)
        chosen = codebook[code]
        losses.append(_level_loss(residual, chosen, beta))
        codes.append(code)
        residuals.append(residual)
        quantized.append(chosen)
        distances.append(dist)
        residual = residual - jax.lax.stop_gradient(chosen)
    quantized = jnp.stack(quantized, axis=1)
    z_q = z + jax.lax.stop_gradient(quantized.sum(axis=1) - z)
    return {"codes": jnp.stack(codes, axis=1).astype(jnp.int32), "z_q": z_q,
            "residuals": jnp.stack(residuals, axis=1), "quantized": quantized,
            "distances": jnp.stack(distances, axis=1), "level_losses": jnp.stack(losses)}


class ResidualQuantizer(nn.Module):
    """``L`` codebooks ``[L, K, code_dim]``; ``residual_quantize`` of ``z [B, d]`` by them."""

    num_levels: int
    codebook_size: int
    code_dim: int
    beta: float = 0.25

    @nn.compact
    def __call__(self, z: jax.Array) -> Outputs:
        codebooks = self.param("codebooks", nn.initializers.normal(self.code_dim ** -0.5),
                               (self.num_levels, self.codebook_size, self.code_dim))
        return residual_quantize(z, codebooks, self.beta)


def _level_loss(residual: jax.Array, code: jax.Array, beta: float) -> jax.Array:
    codebook_term = ((jax.lax.stop_gradient(residual) - code) ** 2).sum(-1)
    commitment_term = ((residual - jax.lax.stop_gradient(code)) ** 2).sum(-1)
    return (codebook_term + beta * commitment_term).mean()


class MLP(nn.Module):
    """Dense (+ LayerNorm) + ReLU (+ dropout) hidden layers, then a linear output layer."""

    hidden_dims: Sequence[int]
    out_dim: int
    dropout: float = 0.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for dim in self.hidden_dims:
            x = nn.Dense(dim)(x)
            x = nn.relu(nn.LayerNorm()(x) if self.layer_norm else x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.out_dim)(x)


class Encoder(MLP):
    """input -> hidden_dims -> code_dim (TIGER: 512, 256, 128 -> 32)."""


class Decoder(MLP):
    """code_dim -> hidden_dims -> input; built with the encoder's dims reversed."""


class RQVAE(nn.Module):
    """Encoder -> ResidualQuantizer -> Decoder. ``aux`` is accepted (and ignored) so that
    extended modules sharing this contract can consume per-item side inputs."""

    input_dim: int
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    code_dim: int = 32
    num_levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25
    dropout: float = 0.0
    recon_loss: str = "mse"
    normalize_input: bool = False

    def setup(self):
        self.encoder = Encoder(self.hidden_dims, self.code_dim, self.dropout)
        self.quantizer = ResidualQuantizer(self.num_levels, self.codebook_size, self.code_dim, self.beta)
        self.decoder = Decoder(tuple(reversed(self.hidden_dims)), self.input_dim, self.dropout)

    def prepare(self, x: jax.Array) -> jax.Array:
        """The model's input and reconstruction target (L2-normalised if configured)."""
        return l2_normalize(x) if self.normalize_input else x

    def latent(self, x: jax.Array, aux: Mapping[str, jax.Array] | None = None, train: bool = False) -> jax.Array:
        return self.encoder(self.prepare(x), train)

    def quantize(self, x: jax.Array, aux: Mapping[str, jax.Array] | None = None) -> Outputs:
        z = self.latent(x, aux)
        return {"z": z} | self.quantizer(z)

    def __call__(self, x: jax.Array, aux: Mapping[str, jax.Array] | None = None, train: bool = False) -> Outputs:
        z = self.latent(x, aux, train)
        out = {"z": z} | self.quantizer(z)
        recon = self.decoder(out["z_q"], train)
        recon_loss = reconstruction_loss(self.prepare(x), recon, self.recon_loss)
        quant_loss = out["level_losses"].sum()
        return out | {"recon": recon, "recon_loss": recon_loss, "quant_loss": quant_loss,
                      "loss": recon_loss + quant_loss}


def reconstruction_loss(target: jax.Array, recon: jax.Array, kind: str) -> jax.Array:
    """``mse``: squared error summed over features, batch mean; ``cosine``: mean ``1 - cos``."""
    if kind == "mse":
        return ((recon - target) ** 2).sum(-1).mean()
    if kind == "cosine":
        return (1.0 - (l2_normalize(recon) * l2_normalize(target)).sum(-1)).mean()
    raise ValueError(f"recon_loss={kind!r}; expected 'mse' or 'cosine'")


def build_rq_vae(config: RQVAEConfig, input_dim: int) -> RQVAE:
    return RQVAE(input_dim=input_dim, hidden_dims=tuple(config.hidden_dims), code_dim=config.code_dim,
                 num_levels=config.num_levels, codebook_size=config.codebook_size, beta=config.beta,
                 dropout=config.dropout, recon_loss=config.recon_loss, normalize_input=config.normalize_input)
