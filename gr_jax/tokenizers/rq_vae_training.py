"""Fitting an RQ-VAE (``rq_vae.RQVAE`` or any module honouring its contract) and tokenizing items.

Codebooks are initialised by residual k-means (``rq_kmeans``) on the encoder outputs of a first
large batch, codes unused over a window are reset to random current residuals, and the
optimizer comes from the shared ``training.optim``.

Extension seam (PRISM): ``fit_rq_vae`` takes any ``module`` honouring the ``RQVAE``
contract -- ``__call__(x, aux, train)`` returns a dict with at least ``loss`` and the
quantizer's outputs (``codes``, ``residuals``, ``distances``, ``level_losses``; its scalar
entries are logged); ``latent(x, aux)`` and ``quantize(x, aux)`` methods; codebooks at
``params["quantizer"]["codebooks"]`` -- plus per-item ``aux`` arrays batched alongside
``x`` and an ``extra_loss_fn(params, batch_aux, outputs) -> (loss, metrics)``. A module may also
keep non-parameter variable collections (e.g. an EMA of soft assignments, or fixed tables that
are not trained): they are created by ``module.init``, may be overridden through
``fit_rq_vae(variables=...)``, are passed to every ``apply`` and, in training, are marked
mutable so that what the module writes to them is carried to the next step. A module without
such collections (the plain RQ-VAE) trains exactly as before.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr_jax.tokenizers.configs import RQKMeansConfig, RQVAEConfig
from gr_jax.tokenizers.rq_kmeans import fit_rq_kmeans
from gr_jax.tokenizers.rq_vae import Outputs, build_rq_vae
from gr_jax.training.optim import named_optimizer

Params = Any
ExtraLossFn = Callable[[Params, Mapping[str, jax.Array], Outputs], tuple[jax.Array, dict[str, jax.Array]]]


def with_codebooks(params: Params, codebooks: jax.Array) -> Params:
    """A copy of ``params`` with ``params["quantizer"]["codebooks"]`` replaced."""
    quantizer = dict(params["quantizer"]) | {"codebooks": jnp.asarray(codebooks)}
    return dict(params) | {"quantizer": quantizer}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Params
    opt_state: Any
    usage: jax.Array  # [L, K] code counts since the last dead-code reset
    rng: jax.Array
    collections: Any = flax.struct.field(default_factory=dict)  # non-"params" variable collections


@dataclasses.dataclass
class RQVAEResult:
    params: Params
    codes: np.ndarray  # [N, L] int32
    codebooks: np.ndarray  # [L, K, code_dim]
    loss_history: list[dict[str, float]]
    latents: np.ndarray  # [N, code_dim]
    residual_norms: np.ndarray  # [L + 1]: mean ||r_l|| entering each level, then the final error
    collections: dict = dataclasses.field(default_factory=dict)  # final non-"params" collections
    item_outputs: dict = dataclasses.field(default_factory=dict)  # extra per-item outputs of quantize ([N, ...])


def _batch_metrics(outputs: Outputs) -> dict[str, jax.Array]:
    """Every scalar output, plus per-level quantization loss and batch code usage."""
    metrics = {k: v for k, v in outputs.items() if jnp.ndim(v) == 0}
    codes, codebook_size = outputs["codes"], outputs["distances"].shape[-1]
    for level in range(codes.shape[1]):
        used = jnp.zeros(codebook_size, bool).at[codes[:, level]].set(True)
        metrics[f"usage_l{level}"] = used.mean()
        metrics[f"quant_loss_l{level}"] = outputs["level_losses"][level]
    return metrics


def _reset_dead_codes(params: Params, usage: jax.Array, residuals: jax.Array, step: jax.Array,
                      key: jax.Array, reset_every: int) -> tuple[Params, jax.Array]:
    """On every ``reset_every``-th step, move codes unused in the window onto residuals of the
    (already shuffled) batch: code ``k`` of level ``l`` takes item ``(offset_l + k) mod B``."""
    num_levels, k = usage.shape
    batch = residuals.shape[0]
    due = step % reset_every == 0
    offsets = jax.random.randint(key, (num_levels, 1), 0, batch)
    picks = (offsets + jnp.arange(k)[None]) % batch
    candidates = jax.lax.stop_gradient(residuals)[picks, jnp.arange(num_levels)[:, None]]
    dead = due & (usage == 0)
    codebooks = jnp.where(dead[..., None], candidates, params["quantizer"]["codebooks"])
    return with_codebooks(params, codebooks), jnp.where(due, 0, usage)


@functools.partial(jax.jit, static_argnames=("module", "tx", "reset_every", "extra_loss_fn"), donate_argnums=0)
def train_step(state: TrainState, x: jax.Array, aux: Mapping[str, jax.Array], *, module: nn.Module,
               tx: optax.GradientTransformation, reset_every: int,
               extra_loss_fn: ExtraLossFn | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step, usage accounting and (every ``reset_every`` steps) dead-code reset.

    Non-parameter collections in ``state.collections`` are passed to the module as mutable;
    their updated values (e.g. an EMA the module maintains) go into the new state."""
    mutable = sorted(state.collections)

    def loss_fn(params, dropout_key):
        variables = {"params": params} | dict(state.collections)
        outputs, collections = module.apply(variables, x, aux, train=True, rngs={"dropout": dropout_key},
                                            mutable=mutable)
        loss, metrics = outputs["loss"], _batch_metrics(outputs)
        if extra_loss_fn is not None:
            extra, extra_metrics = extra_loss_fn(params, aux, outputs)
            loss = loss + extra
            metrics = metrics | extra_metrics | {"extra_loss": extra, "total_loss": loss}
        return loss, (outputs, metrics, collections)

    rng, dropout_key, reset_key = jax.random.split(state.rng, 3)
    grads, (outputs, metrics, collections) = jax.grad(loss_fn, has_aux=True)(state.params, dropout_key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    codes = outputs["codes"]
    usage = state.usage.at[jnp.arange(codes.shape[1])[None], codes].add(1)
    if reset_every > 0:
        params, usage = _reset_dead_codes(params, usage, outputs["residuals"], state.step + 1, reset_key,
                                          reset_every)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, usage=usage, rng=rng,
                     collections=dict(collections))
    return new, metrics


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(module: nn.Module, key: jax.Array, x: jax.Array, aux: Mapping[str, jax.Array]) -> dict:
    return dict(module.init({"params": key}, x, aux))


def _init(module: nn.Module, key: jax.Array, x: jax.Array, aux: Mapping[str, jax.Array]) -> Params:
    return _init_variables(module, key, x, aux)["params"]


def init_collections(module: nn.Module, x: np.ndarray, aux: Mapping[str, np.ndarray],
                     overrides: Mapping[str, Any] | None = None) -> dict:
    """The module's non-"params" variable collections as ``init`` creates them, with the leaves
    given in ``overrides`` (same nesting, e.g. ``{"constants": {"anchors": {"tags_l0": array}}}``)
    replacing the initial values; an override naming a variable the module lacks, or of another
    shape, is an error."""
    variables = _init_variables(module, jax.random.PRNGKey(0), x[:2], _take(aux, np.arange(2)))
    flat = flax.traverse_util.flatten_dict({k: v for k, v in variables.items() if k != "params"})
    for path, value in flax.traverse_util.flatten_dict(dict(overrides or {})).items():
        if path not in flat:
            raise ValueError(f"variables override {'/'.join(path)!r} names no variable of the module")
        if tuple(np.shape(value)) != tuple(flat[path].shape):
            raise ValueError(f"variables override {'/'.join(path)!r} has shape {np.shape(value)}, "
                             f"the module's has {tuple(flat[path].shape)}")
        flat[path] = jnp.asarray(value, flat[path].dtype)
    return flax.traverse_util.unflatten_dict(flat) if flat else {}


@functools.partial(jax.jit, static_argnames=("module", "method"))
def _apply(params: Params, x: jax.Array, aux: Mapping[str, jax.Array], *, module: nn.Module, method: str,
           collections: Mapping[str, Any] | None = None):
    return module.apply({"params": params} | dict(collections or {}), x, aux, method=method)


def _take(aux: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in aux.items()}


def init_params(module: nn.Module, config: RQVAEConfig, x: np.ndarray, aux: Mapping[str, np.ndarray],
                key: jax.Array, rng: np.random.Generator, *, collections: Mapping[str, Any] | None = None) -> Params:
    """Random init, then (if ``config.kmeans_init``) residual k-means codebooks computed on the
    encoder outputs of a random ``kmeans_init_samples``-item first batch (``collections``: the
    module's non-"params" variables, if its ``latent`` reads any)."""
    params = _init(module, key, x[:2], _take(aux, np.arange(2)))
    if not config.kmeans_init:
        return params
    index = rng.permutation(len(x))[:config.kmeans_init_samples]
    z = _apply(params, x[index], _take(aux, index), module=module, method="latent", collections=collections)
    fit = fit_rq_kmeans(np.asarray(z), RQKMeansConfig(num_levels=config.num_levels, codebook_size=config.codebook_size,
                                                      num_iters=config.kmeans_iters, normalize_input=False,
                                                      seed=int(rng.integers(2**31))))
    return with_codebooks(params, fit.codebooks)


def _log(step: int, total: int, metrics: dict[str, float], tic: float) -> None:
    usage = " ".join(f"{v:.2f}" for k, v in sorted(metrics.items()) if k.startswith("usage_l"))
    losses = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())
                      if k.endswith("loss") and not k.startswith("quant_loss_l"))
    logging.info("rq-vae step %d/%d %s usage=[%s] (%.1fs)", step, total, losses, usage, time.time() - tic)


def fit_rq_vae(x: np.ndarray, config: RQVAEConfig = RQVAEConfig(), *, module: nn.Module | None = None,
               aux: Mapping[str, np.ndarray] | None = None, extra_loss_fn: ExtraLossFn | None = None,
               init: Params | None = None, variables: Mapping[str, Any] | None = None,
               log_every: int = 100) -> RQVAEResult:
    """Train an RQ-VAE on item embeddings ``x [N, D]`` and tokenize every item.

    ``module`` defaults to ``build_rq_vae(config, D)``; ``aux`` holds per-item arrays
    (leading dim ``N``) batched alongside ``x`` and passed to the module and to
    ``extra_loss_fn(params, batch_aux, outputs)``, whose loss is added to ``outputs["loss"]``.
    ``init`` starts from given params (copied; no k-means init). ``variables`` overrides initial
    values of the module's non-"params" collections (see ``init_collections``); those collections
    are updated by training steps and returned in ``RQVAEResult.collections``. Minibatches of
    ``min(batch_size, N)`` items are drawn per epoch from a seeded shuffle (remainder dropped).
    """
    x = np.asarray(x, np.float32)
    aux = {k: np.asarray(v) for k, v in (aux or {}).items()}
    module = module if module is not None else build_rq_vae(config, x.shape[1])
    rng = np.random.default_rng(config.seed)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    collections = init_collections(module, x, aux, variables)
    if init is None:
        params = init_params(module, config, x, aux, init_key, rng, collections=collections)
    else:
        params = jax.tree.map(jnp.array, init)  # a copy: the train state is donated
    tx = named_optimizer(config.optimizer, config.learning_rate, config.weight_decay)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params),
                       usage=jnp.zeros((config.num_levels, config.codebook_size), jnp.int32), rng=state_key,
                       collections=collections)
    step_fn = functools.partial(train_step, module=module, tx=tx, reset_every=config.reset_every,
                                extra_loss_fn=extra_loss_fn)
    batch_size = min(config.batch_size, len(x))
    steps_per_epoch = len(x) // batch_size
    total = steps_per_epoch * config.num_epochs
    history, tic = [], time.time()
    for epoch in range(config.num_epochs):
        order = rng.permutation(len(x))
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            state, metrics = step_fn(state, x[index], _take(aux, index))
            step = epoch * steps_per_epoch + i + 1
            if step == 1 or step % log_every == 0 or step == total:
                record = {"step": step} | {k: float(v) for k, v in jax.device_get(metrics).items()}
                history.append(record)
                _log(step, total, record, tic)
    collections = jax.device_get(state.collections)
    encoded = quantize_all(module, state.params, x, aux, config.encode_batch_size, collections=collections)
    return RQVAEResult(params=state.params, codes=encoded["codes"],
                       codebooks=np.asarray(state.params["quantizer"]["codebooks"]), loss_history=history,
                       latents=encoded["z"], residual_norms=encoded["residual_norms"], collections=collections,
                       item_outputs=encoded["item_outputs"])


# ----------------------------------------------------------------------------- inference


def quantize_all(module: nn.Module, params: Params, x: np.ndarray, aux: Mapping[str, np.ndarray] | None = None,
                 batch_size: int = 4096, *, collections: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """``codes [N, L]``, latents ``z [N, d]``, mean residual norms ``[L + 1]`` and any per-item
    ``item_outputs`` the module's ``quantize`` adds, in fixed-size batches (``collections``: the
    module's non-"params" variables, if its ``quantize`` reads any)."""
    x = np.asarray(x, np.float32)
    aux = {k: np.asarray(v) for k, v in (aux or {}).items()}
    n = len(x)
    batch_size = min(batch_size, n)
    codes, latents, norms, extras = [], [], [], []
    for start in range(0, n, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), n - 1)  # pad the tail by repetition
        out = jax.device_get(_apply(params, x[index], _take(aux, index), module=module, method="quantize",
                                    collections=collections))
        keep = min(batch_size, n - start)
        final = out["residuals"][:, -1] - out["quantized"][:, -1]
        residuals = np.concatenate([out["residuals"], final[:, None]], axis=1)[:keep]
        codes.append(out["codes"][:keep])
        latents.append(out["z"][:keep])
        norms.append(np.linalg.norm(residuals, axis=-1))
        extras.append({k: v[:keep] for k, v in out.get("item_outputs", {}).items()})
    return {"codes": np.concatenate(codes).astype(np.int32), "z": np.concatenate(latents),
            "residual_norms": np.concatenate(norms).mean(0),
            "item_outputs": {k: np.concatenate([e[k] for e in extras]) for k in extras[0]}}


def encode(params: Params, config: RQVAEConfig, x: np.ndarray, *, module: nn.Module | None = None,
           aux: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Semantic-ID codes ``[N, L]`` int32 for (possibly new) items ``x [N, D]``."""
    module = module if module is not None else build_rq_vae(config, np.shape(x)[1])
    return quantize_all(module, params, x, aux, config.encode_batch_size)["codes"]
