"""The shared training loop.

Runs inside a ``(data, model)`` device mesh with logical-axis sharding rules: the train
state is created directly in its sharding, the step is one jitted function with donated
state, batches are split along ``data``. Around it: periodic validation, best/latest
Orbax checkpoints with the Grain iterator state (resume is the default; also every
``train.checkpoint_every_minutes``), early stopping, TensorBoard + JSONL metrics, a progress
line with throughput and ETA, and a hard stop on non-finite loss or gradients. SIGTERM or
SIGINT (a preempted VM, a scheduler, Ctrl-C) saves the latest checkpoint at the next step
boundary and raises ``Preempted``; rerunning the command resumes from that step with the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from gr_jax.data.dataset import Interactions
from gr_jax.data.pipeline import batch_iterator, train_dataset, train_rows
from gr_jax.evaluation.evaluator import evaluate_split
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.params import overlay
from gr_jax.training import sharding
from gr_jax.training.checkpoint import Checkpoints
from gr_jax.training.metric_writer import MetricWriter
from gr_jax.training.optim import learning_rate_schedule, make_optimizer
from gr_jax.training.plots import plot_training_curves

SELECT_METRIC = "ndcg@10"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN/Inf."""


class Preempted(Exception):  # noqa: N818 (a stop, not an error)
    """SIGTERM/SIGINT stopped training after its latest checkpoint was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step} after saving a checkpoint")
        self.signum, self.step = signum, step


class StopSignals:
    """While active, SIGTERM and SIGINT only record that they arrived (``received``), so that the
    training loop can checkpoint at a step boundary before stopping. Handlers can only be set from
    the main thread; elsewhere signals keep their default behaviour."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum, frame):
        del frame
        if self.received is None:
            logging.warning("Signal %d received: checkpointing at the next step boundary, then stopping.", signum)
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def agreed_at(step: int, every: int, timed_save: bool, signal_number: int) -> tuple[bool, int]:
    """Whether to save on time and which stop signal to honour, the same on every process: a
    multi-process run decides on every ``every``-th step from all processes' clocks and signals
    (a save or a stop is collective, so all must take it at one step)."""
    if jax.process_count() == 1:
        return timed_save, signal_number
    if step % every:
        return False, 0
    gathered = multihost_utils.process_allgather(np.array([timed_save, signal_number], np.int64))
    return bool(gathered[:, 0].max()), int(gathered[:, 1].max())


def make_train_step(model: TrainableRecommender, optimizer: optax.GradientTransformation):
    """``(state, batch) -> (state, metrics)``; metrics carry loss, grad norm and a finiteness flag."""

    precision = model.precision

    def loss_fn(params, batch, rng, step):
        loss, aux = model.loss(precision.for_compute(params), precision.for_compute(batch), rng, step)
        return loss.astype(jnp.float32), aux

    def step(state: TrainState, batch: dict):
        rng, step_rng = jax.random.split(state.rng)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng, state.step)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite} | aux

    return step


@contextlib.contextmanager
def mesh_context(config: ml_collections.ConfigDict):
    """The config's device mesh with its logical axis rules active."""
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
        yield mesh


def _state_creator(model: TrainableRecommender, optimizer):
    def create(rng, batch):
        init_rng, state_rng = jax.random.split(rng)
        params = model.precision.store(model.init(init_rng, batch))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=state_rng)

    return create


def create_state(model: TrainableRecommender, optimizer, config, mesh, example: dict, seed: int):
    """A train state created directly in its mesh sharding; returns (state, state_shardings)."""
    create = _state_creator(model, optimizer)
    rng = jax.random.PRNGKey(seed)
    shardings = sharding.state_shardings(jax.eval_shape(create, rng, example), mesh, sharding.logical_rules(config))
    state = jax.jit(lambda r, b: nn.meta.unbox(create(r, b)), out_shardings=shardings)(rng, example)
    return state, shardings


def abstract_state(model: TrainableRecommender, optimizer, config, mesh, example: dict):
    """The train state's shapes, dtypes and shardings, nothing allocated (ahead-of-time compilation);
    returns (abstract state, state_shardings)."""
    # An abstract key: nothing concrete may be made under a mesh of devices this host lacks (AOT).
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    boxed = jax.eval_shape(_state_creator(model, optimizer), rng, example)
    shardings = sharding.state_shardings(boxed, mesh, sharding.logical_rules(config))
    # The boxes' values, not nn.meta.unbox: that applies sharding constraints, which refuse bare shapes.
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    shapes = jax.tree.map(lambda x: x.value if is_box(x) else x, boxed, is_leaf=is_box)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        shardings), shardings


def jit_train_step(model: TrainableRecommender, optimizer, mesh, state_shardings):
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(make_train_step(model, optimizer), donate_argnums=0,
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated))


def jit_topk(model: TrainableRecommender, mesh, params_shardings, k: int, selection: bool = False):
    """``params -> (local batch -> [local B, k])`` numpy top-k items; the global batch is split along ``data``.

    Call it once per evaluation round with the round's params, then rank every batch with the
    returned function. ``model.eval_params`` runs once here, jitted, and ``topk`` receives its output
    (the two-tower and CRBR models add the catalogue's item vectors).

    ``selection``: rank with ``model.selection_topk`` (what picks checkpoints) instead of ``model.topk``."""
    method = model.selection_topk if selection else model.topk
    precision = model.precision
    prepare = jax.jit(lambda p: model.eval_params(precision.for_compute(p)), in_shardings=(params_shardings,))
    # The prepared params stay where eval_params placed them: their tree need not be the params' one.
    topk = jax.jit(lambda p, b: method(p, precision.for_compute(b), k),
                   in_shardings=(None, sharding.batch_sharding(mesh)))

    def for_params(params):
        prepared = prepare(params)
        return lambda batch: sharding.to_host_local(topk(prepared, sharding.shard_batch(batch, mesh)), mesh)

    return for_params


def steps_per_epoch(phases: tuple[np.ndarray, ...], batch_size: int) -> int:
    """Steps of an epoch over the training examples; of the mean phase for a curriculum."""
    return sum(map(len, phases)) // len(phases) // batch_size


def total_train_steps(train: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    return train.num_steps if train.num_steps > 0 else train.num_epochs * steps_per_epoch


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class TrainResult:
    params: Any
    summary: dict


class _Progress:
    """Collects per-step metrics on device; every ``log_every`` steps syncs, checks finiteness, logs."""

    def __init__(self, writer: MetricWriter, schedule, total_steps: int, batch_size: int, start_step: int):
        self.writer, self.schedule, self.total, self.batch_size = writer, schedule, total_steps, batch_size
        self.pending: list[dict] = []
        self.tic, self.tic_step = time.time(), start_step

    def add(self, metrics: dict) -> None:
        self.pending.append(metrics)

    def flush(self, step: int) -> None:
        host, self.pending = jax.device_get(self.pending), []
        if not host:
            return
        if not all(bool(m["finite"]) for m in host):
            raise NonFiniteError(f"non-finite loss or gradient norm by step {step} (last loss "
                                 f"{float(host[-1]['loss'])}, grad norm {float(host[-1]['grad_norm'])}); "
                                 f"lower train.learning_rate, raise train.warmup_steps or check the inputs")
        rate = (step - self.tic_step) / max(time.time() - self.tic, 1e-9)
        scalars = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[-1] if k != "finite"}
        scalars |= {"train/learning_rate": float(self.schedule(step)), "train/steps_per_s": rate,
                    "train/examples_per_s": rate * self.batch_size}
        self.writer.write(step, scalars)
        logging.info("step %d/%d (%.0f%%) loss %.4f | %.1f steps/s %.0f ex/s | ETA %s", step, self.total,
                     100 * step / self.total, scalars["train/loss"], rate, scalars["train/examples_per_s"],
                     _format_eta((self.total - step) / max(rate, 1e-9)))
        self.restart(step)

    def restart(self, step: int) -> None:
        """Starts a new throughput window (evaluation time is not training throughput)."""
        self.tic, self.tic_step = time.time(), step


def train(config: ml_collections.ConfigDict, workdir: str, model: TrainableRecommender,
          interactions: Interactions, init_params: Any = None) -> TrainResult:
    """Trains ``model`` on the training split; returns the params with the best validation NDCG@10.

    ``init_params``: values to start from instead of ``model.init``'s (a finished run's best params,
    ``model.init_from``; see ``params.overlay``), unless a latest checkpoint resumes the run. A
    curriculum (``model.training_phases``) trains its phases in order, each for an equal share of
    the steps; an epoch is then the mean phase's length."""
    train_cfg = config.train
    phases = model.training_phases(train_rows(interactions), interactions)
    epoch_steps = steps_per_epoch(phases, train_cfg.batch_size)
    if epoch_steps < 1:
        raise ValueError(f"train.batch_size={train_cfg.batch_size} exceeds the {min(map(len, phases))} training "
                         f"examples; lower it")
    total_steps = total_train_steps(train_cfg, epoch_steps)
    eval_every = max(1, int(train_cfg.eval_every_epochs * epoch_steps))
    examples = {"rows": phases[0]}
    if len(phases) > 1:
        examples = {"phases": phases, "phase_batches": -(-total_steps // len(phases))}
        logging.info("Curriculum: %d phases of %s training examples, %d steps each.", len(phases),
                     [len(p) for p in phases], examples["phase_batches"])
    data = train_dataset(interactions, max_history=config.data.max_history,
                         global_batch_size=train_cfg.batch_size, seed=config.seed,
                         with_partner=model.needs_partner, **examples)
    iterator = batch_iterator(data, config.data.workers)
    if jax.process_index() == 0:
        model.log_examples(data[0])
    optimizer = make_optimizer(train_cfg, total_steps, model.frozen)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), SELECT_METRIC, keep=train_cfg.checkpoint_keep)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    with contextlib.ExitStack() as stack:
        stack.callback(iterator.close)  # stops data.workers' processes
        stack.callback(writer.close)
        stack.callback(checkpoints.close)
        mesh = stack.enter_context(mesh_context(config))
        signals = stack.enter_context(StopSignals())
        state, shardings = create_state(model, optimizer, config, mesh, sharding.shard_batch(data[0], mesh),
                                        config.seed)
        num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
        loop = {"best": -1.0, "bad_evals": 0, "best_step": 0}
        restored = checkpoints.restore_latest(state)
        if restored is not None:
            state, saved = restored
            iterator.set_state(saved["iterator"])
            loop = saved["loop"]
            logging.info("Resumed from step %d (best valid %s %.4f).", int(state.step), SELECT_METRIC, loop["best"])
        elif init_params is not None:
            state = state.replace(params=jax.device_put(overlay(state.params, init_params), shardings.params))
        train_step = jit_train_step(model, optimizer, mesh, shardings)
        topk = jit_topk(model, mesh, shardings.params, config.eval.list_size, selection=True)
        logging.info("Training %s: %d params, %d steps (%d/epoch, batch %d), eval every %d steps, mesh %s, %s.",
                     config.model.name, num_params, total_steps, epoch_steps, train_cfg.batch_size,
                     eval_every, dict(mesh.shape), model.precision.describe())
        start_step = int(state.step)
        progress = _Progress(writer, learning_rate_schedule(train_cfg, total_steps), total_steps,
                             train_cfg.batch_size, start_step)
        train_start = time.time()
        stopped_early = bool(train_cfg.early_stop_patience) and loop["bad_evals"] >= train_cfg.early_stop_patience
        step, saved_at = start_step, time.time()
        while step < total_steps and not stopped_early:
            step += 1
            state, metrics = train_step(state, sharding.shard_batch(next(iterator), mesh))
            progress.add(metrics)
            evaluate_now = step % eval_every == 0 or step == total_steps
            if step % train_cfg.log_every_steps == 0 or evaluate_now:
                progress.flush(step)
            if evaluate_now:
                valid = evaluate_split(topk(state.params), interactions, "valid", config.data, config.eval)
                writer.write(step, {f"valid/{k}": v for k, v in valid.items() if k != "num_users"})
                if valid[SELECT_METRIC] > loop["best"]:
                    loop.update(best=valid[SELECT_METRIC], bad_evals=0, best_step=step)
                    checkpoints.save_best(step, state.params, valid)
                else:
                    loop["bad_evals"] += 1
                logging.info("step %d valid %s %.4f (best %.4f at step %d)", step, SELECT_METRIC,
                             valid[SELECT_METRIC], loop["best"], loop["best_step"])
                stopped_early = bool(train_cfg.early_stop_patience) and \
                    loop["bad_evals"] >= train_cfg.early_stop_patience
                if stopped_early:
                    logging.info("Early stop: no valid %s improvement in %d evaluations.", SELECT_METRIC,
                                 loop["bad_evals"])
            every_steps, every_minutes = train_cfg.checkpoint_every_steps, train_cfg.checkpoint_every_minutes
            timed, stop = agreed_at(step, train_cfg.log_every_steps, bool(every_minutes) and
                                    time.time() - saved_at >= 60 * every_minutes, signals.received or 0)
            if evaluate_now or (every_steps and step % every_steps == 0) or timed or stop:
                progress.flush(step)  # never checkpoint a state whose loss went non-finite
                checkpoints.save_latest(step, state, {"iterator": iterator.get_state(), "loop": loop})
                saved_at = time.time()
            if stop:
                checkpoints.wait()
                raise Preempted(stop, step)
            if evaluate_now:
                progress.restart(step)
        checkpoints.wait()
        best_params = checkpoints.restore_best(state.params)
    title = f"{config.name} on {config.data.name or config.data.format}"
    curves = None if jax.process_index() else plot_training_curves(workdir, title=title)
    summary = {"num_params": num_params, "total_steps": total_steps, "steps_per_epoch": epoch_steps,
               "final_step": int(state.step), "best_step": loop["best_step"],
               f"best_valid_{SELECT_METRIC}": loop["best"], "stopped_early": stopped_early,
               "train_seconds": time.time() - train_start, "curves_png": curves,
               "precision": model.precision.describe()}
    return TrainResult(params=best_params if best_params is not None else state.params, summary=summary)


def restore_best_params(workdir: str, model: TrainableRecommender, interactions: Interactions,
                        config: ml_collections.ConfigDict):
    """Best params of a finished run in ``workdir`` (for an eval-only invocation)."""
    data = train_dataset(interactions, max_history=config.data.max_history,
                         global_batch_size=config.train.batch_size, seed=config.seed)
    example = {k: jnp.asarray(v) for k, v in data[0].items()}
    abstract = jax.eval_shape(lambda r, b: nn.meta.unbox(model.init(r, b)), jax.random.PRNGKey(0), example)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), SELECT_METRIC)
    params = checkpoints.restore_best(abstract)
    checkpoints.close()
    if params is None:
        raise FileNotFoundError(f"no trained checkpoint in {workdir}/checkpoints; run the train stage first")
    return params
