"""The shared training loop: jitted steps with donated state, periodic validation,
best/latest Orbax checkpoints (resume by default), early stopping, metric writers,
a progress line with throughput and ETA, and a hard stop on non-finite loss/grads."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gr_jax.data.dataset import Interactions
from gr_jax.data.pipeline import num_train_examples, train_dataset
from gr_jax.evaluation.evaluator import evaluate_split
from gr_jax.training.checkpoint import Checkpoints
from gr_jax.training.metric_writer import MetricWriter
from gr_jax.training.optim import learning_rate_schedule, make_optimizer

SELECT_METRIC = "ndcg@10"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf."""


def _device_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def make_train_step(model, optimizer: optax.GradientTransformation):
    """``(state, batch) -> (state, metrics)``; metrics carry loss, grad norm and a finiteness flag."""

    def step(state: TrainState, batch: dict):
        rng, step_rng = jax.random.split(state.rng)
        (loss, aux), grads = jax.value_and_grad(model.loss, has_aux=True)(state.params, batch, step_rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite} | aux

    return jax.jit(step, donate_argnums=0)


def total_train_steps(train: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    return train.num_steps if train.num_steps > 0 else train.num_epochs * steps_per_epoch


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class TrainResult:
    params: Any
    summary: dict


def train(config: ml_collections.ConfigDict, workdir: str, model, interactions: Interactions) -> TrainResult:
    """Trains ``model`` on the training split; returns the params with the best validation NDCG@10."""
    train_cfg = config.train
    steps_per_epoch = num_train_examples(interactions) // train_cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size={train_cfg.batch_size} exceeds the "
                         f"{num_train_examples(interactions)} training examples; lower it")
    total_steps = total_train_steps(train_cfg, steps_per_epoch)
    eval_every = max(1, int(train_cfg.eval_every_epochs * steps_per_epoch))
    data = train_dataset(interactions, max_history=config.data.max_history,
                         global_batch_size=train_cfg.batch_size, seed=config.seed)
    iterator = iter(data.to_iter_dataset())

    optimizer = make_optimizer(train_cfg, total_steps)
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    example = _device_batch(data[0])
    params = model.init(init_rng, example)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=state_rng)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), SELECT_METRIC, keep=train_cfg.checkpoint_keep)
    loop = {"best": -1.0, "bad_evals": 0, "best_step": 0}
    restored = checkpoints.restore_latest(jax.tree_util.tree_map(lambda x: x, state))
    if restored is not None:
        state, saved = restored
        iterator.set_state(saved["iterator"])
        loop = saved["loop"]
        logging.info("Resumed from step %d (best valid %s %.4f).", int(state.step), SELECT_METRIC, loop["best"])

    train_step = make_train_step(model, optimizer)
    topk = jax.jit(model.topk, static_argnums=2)
    schedule = learning_rate_schedule(train_cfg, total_steps)
    writer = MetricWriter(workdir)
    logging.info("Training %s: %d params, %d steps (%d/epoch, batch %d), eval every %d steps.",
                 config.model.name, num_params, total_steps, steps_per_epoch, train_cfg.batch_size, eval_every)

    start_step = int(state.step)
    tic, tic_step, train_start = time.time(), start_step, time.time()
    stopped_early = False
    pending: list[dict] = []
    for step in range(start_step + 1, total_steps + 1):
        state, metrics = train_step(state, _device_batch(next(iterator)))
        pending.append(metrics)
        if step % train_cfg.log_every_steps == 0 or step == total_steps or step % eval_every == 0:
            host = jax.device_get(pending)
            pending = []
            if not all(bool(m["finite"]) for m in host):
                raise NonFiniteError(f"non-finite loss or gradient norm by step {step} "
                                     f"(last loss {float(host[-1]['loss'])}, grad norm "
                                     f"{float(host[-1]['grad_norm'])}); lower train.learning_rate or check inputs")
            elapsed = time.time() - tic
            rate = (step - tic_step) / max(elapsed, 1e-9)
            scalars = {"train/loss": float(np.mean([m["loss"] for m in host])),
                       "train/grad_norm": float(host[-1]["grad_norm"]),
                       "train/learning_rate": float(schedule(step)),
                       "train/steps_per_s": rate, "train/examples_per_s": rate * train_cfg.batch_size}
            writer.write(step, scalars)
            logging.info("step %d/%d (%.0f%%) loss %.4f | %.1f steps/s %.0f ex/s | ETA %s", step, total_steps,
                         100 * step / total_steps, scalars["train/loss"], rate, scalars["train/examples_per_s"],
                         _format_eta((total_steps - step) / max(rate, 1e-9)))
            tic, tic_step = time.time(), step
        if step % eval_every == 0 or step == total_steps:
            valid = evaluate_split(lambda b: topk(state.params, _device_batch(b), config.eval.list_size),
                                   interactions, "valid", config.data, config.eval)
            writer.write(step, {f"valid/{k}": v for k, v in valid.items() if k != "num_users"})
            improved = valid[SELECT_METRIC] > loop["best"]
            if improved:
                loop.update(best=valid[SELECT_METRIC], bad_evals=0, best_step=step)
                checkpoints.save_best(step, state.params, valid)
            else:
                loop["bad_evals"] += 1
            checkpoints.save_latest(step, state, {"iterator": iterator.get_state(), "loop": loop})
            logging.info("step %d valid %s %.4f (best %.4f at step %d)", step, SELECT_METRIC,
                         valid[SELECT_METRIC], loop["best"], loop["best_step"])
            tic = time.time()  # evaluation time is not training throughput
            if train_cfg.early_stop_patience and loop["bad_evals"] >= train_cfg.early_stop_patience:
                logging.info("Early stop: no valid %s improvement in %d evaluations.", SELECT_METRIC,
                             loop["bad_evals"])
                stopped_early = True
                break
    checkpoints.wait()
    best_params = checkpoints.restore_best(state.params)
    checkpoints.close()
    writer.close()
    summary = {"num_params": num_params, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
               "final_step": int(state.step), "best_step": loop["best_step"],
               f"best_valid_{SELECT_METRIC}": loop["best"], "stopped_early": stopped_early,
               "train_seconds": time.time() - train_start}
    return TrainResult(params=best_params if best_params is not None else state.params, summary=summary)


def restore_best_params(workdir: str, model, interactions: Interactions, config: ml_collections.ConfigDict):
    """Best params of a finished run in ``workdir`` (for an eval-only invocation)."""
    data = train_dataset(interactions, max_history=config.data.max_history,
                         global_batch_size=config.train.batch_size, seed=config.seed)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), _device_batch(data[0]))
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), SELECT_METRIC)
    params = checkpoints.restore_best(abstract)
    checkpoints.close()
    if params is None:
        raise FileNotFoundError(f"no trained checkpoint in {workdir}/checkpoints; run the train stage first")
    return params
