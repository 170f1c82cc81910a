"""The recommender contract: what the trainer, the stages and the evaluator call on a model.

Every model is built by ``registry.build`` from its config and the artifacts of earlier stages,
and is never changed afterwards: anything it needs (a pre-trained Q-Former, decoding
temperatures, an unrolled decoding loop for FLOP counts) comes in through its constructor.

- ``Recommender``: ranks ``topk(params, batch, k) -> [B, k]`` item ids (-1 padded), best first.
- ``TrainableRecommender``: a neural model trained by the shared trainer. Required: ``init`` and
  ``loss``; the other methods are optional hooks whose defaults are written here.
- ``FittedRecommender``: a closed-form model (the count baselines) whose ``fit`` returns the
  "params" (a dict of arrays, saved by the train stage) that ``topk`` reads; ranks on the host.
- ``IndexRetriever``: a trainable model that ranks by searching an item-vector index with a set of
  queries per user; ``eval.index='scann'`` serves it from ScaNN (``retrieval.serving``).
- ``ActionRanker``: a trainable model that also predicts the user's action on a shown item; the
  eval stage reports its ranking quality (AUC, calibration) on held-out exposures.

Batches are dicts of arrays (``gr_jax.data.splits.assemble_batch``): ``user``, ``history``,
``history_mask``, ``target``, ``history_event``, ``target_event`` (+ ``partner_history`` and
``partner_history_mask`` for models with ``needs_partner``).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import numpy as np

from gr_jax.data.dataset import Interactions
from gr_jax.precision import Precision
from gr_jax.tokenizers.sid_table import SIDTable

Params = Any


class Recommender(abc.ABC):
    trainable: ClassVar[bool]

    @abc.abstractmethod
    def topk(self, params: Params, batch: dict, k: int) -> jax.Array:
        """The ``k`` best items ``[B, k]`` for each row of ``batch``, best first (-1 for no item)."""


class FittedRecommender(Recommender):
    trainable = False

    @abc.abstractmethod
    def fit(self, interactions: Interactions) -> dict[str, np.ndarray]:
        """Statistics of the training split that ``topk`` ranks with."""


class TrainableRecommender(Recommender):
    trainable = True
    needs_partner: bool = False  # training batches carry another history with the same target (DuoRec)
    precision: Precision = Precision()  # the trainer computes loss and top-k in precision.compute
    float_tables: ClassVar[tuple[str, ...]] = ()  # attributes holding constant float inputs (item features)
    frozen: tuple[str, ...] = ()  # parameter patterns the model keeps fixed itself (LoRA's base), beside train.frozen

    def set_precision(self, precision: Precision) -> None:
        """Called once after construction (``model.dtype``/``model.param_dtype``): the constant
        ``float_tables`` move to the compute dtype, as the batch does."""
        self.precision = precision
        for name in self.float_tables:
            setattr(self, name, precision.for_compute(getattr(self, name)))

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict) -> Params:
        """Parameters for batches shaped like ``batch`` (may carry logical-partitioning boxes)."""

    @abc.abstractmethod
    def loss(self, params: Params, batch: dict, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        """(scalar loss, dict of scalar metrics) of a training batch; ``step`` is the optimizer step
        (traced), for losses that follow a schedule."""

    def selection_topk(self, params: Params, batch: dict, k: int) -> jax.Array:
        """The ranking that picks checkpoints during training; ``topk`` unless a model has a cheaper one."""
        return self.topk(params, batch, k)

    def eval_params(self, params: Params) -> Params:
        """What ``topk`` receives instead of ``params``, computed once per evaluation round (e.g. the
        catalogue's item vectors)."""
        return params

    def item_embeddings(self, params: Params) -> jax.Array | None:
        """The model's item vectors ``[num_items, D]`` when it has any (saved by the train stage)."""
        return None

    def learned_sid_table(self, params: Params) -> SIDTable | None:
        """The catalogue's semantic IDs when the model learns them itself (``latent``): the train stage
        writes them as a SID table artifact with its health report, as the tokenize stage does."""
        return None

    def log_examples(self, batch: dict) -> None:
        """Called once before training with the first training batch (host arrays): models that
        turn batches into something a user should check (prompts) log an example of each."""
        del batch

    def training_rows(self, rows: np.ndarray, interactions: Interactions) -> np.ndarray:
        """The training examples, rows of (user, target position), the model learns from; all of them
        unless it samples (e.g. negatives to a positive:negative ratio)."""
        del interactions
        return rows

    def training_phases(self, rows: np.ndarray, interactions: Interactions) -> tuple[np.ndarray, ...]:
        """A curriculum: the training examples of each phase, trained in order for equal shares of
        the steps; one phase, ``training_rows``, unless the model schedules its mix (GAT's ratios)."""
        return (self.training_rows(rows, interactions),)


class ActionRanker(TrainableRecommender):
    @abc.abstractmethod
    def positive_probability(self, params: Params, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(raw, calibrated) probability ``[B]`` that showing the batch's target item to the user
        gets a positive action."""


class IndexRetriever(TrainableRecommender):
    @abc.abstractmethod
    def item_embeddings(self, params: Params) -> jax.Array:
        """The catalogue's vectors ``[num_items, E]`` that the queries search."""

    @abc.abstractmethod
    def query_set(self, params: Params, batch: dict) -> jax.Array:
        """Unit queries ``[B, P, E]`` per user; their results merge per item by max score."""
