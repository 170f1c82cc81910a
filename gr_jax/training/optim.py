"""Optimizers: the trainer's AdamW with linear warmup, cosine/linear/constant decay, global-norm
clipping and frozen parameters (``train.frozen``), and plain optimizers by name (the tokenizers'
fitting loops)."""

from __future__ import annotations

import functools

import jax
import ml_collections
import optax

from gr_jax.config_schema import check_choice
from gr_jax.params import is_frozen, param_path


def learning_rate_schedule(train: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = min(train.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    after = {
        "cosine": optax.cosine_decay_schedule(train.learning_rate, decay_steps),
        "linear": optax.linear_schedule(train.learning_rate, 0.0, decay_steps),
        "constant": optax.constant_schedule(train.learning_rate),
    }
    check_choice("train.schedule", train.schedule)
    warm = optax.linear_schedule(train.learning_rate / max(warmup, 1), train.learning_rate, max(warmup, 1))
    return optax.join_schedules([warm, after[train.schedule]], [warmup])


def make_optimizer(train: ml_collections.ConfigDict, total_steps: int,
                   model_frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """Clipped AdamW on the schedule; parameters matching ``train.frozen`` or ``model_frozen`` (what
    the model itself keeps fixed, e.g. LoRA's base) get zero updates (no step, no weight decay)."""
    tx = optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(learning_rate_schedule(train, total_steps), b1=train.b1, b2=train.b2,
                    weight_decay=train.weight_decay),
    )
    frozen = tuple(train.frozen) + tuple(model_frozen)
    if not frozen:
        return tx

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if is_frozen(param_path(path), frozen) else "trained", params)

    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


@functools.cache
def named_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """``adamw`` | ``adam`` | ``adagrad`` | ``sgd`` at a constant rate (weight decay: adamw only).
    Cached, so equal settings give the same (hashable) transformation and share compilations."""
    check_choice("optimizer", name)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    return {"adam": optax.adam, "adagrad": optax.adagrad, "sgd": optax.sgd}[name](learning_rate)
