"""Every model, picked by ``config.model.name``: how it is built from the artifacts of earlier
stages, and which of them it reads (so a missing one stops the run before anything starts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_collections

from gr_jax.config_schema import check_choice
from gr_jax.models.recommender import Recommender
from gr_jax.precision import Precision

if TYPE_CHECKING:
    from gr_jax.stages import Artifacts


@dataclasses.dataclass(frozen=True)
class Entry:
    build: Callable[..., Recommender]  # (config, artifacts, pretrained_qformer) -> model
    reads: Callable[[ml_collections.ConfigDict], tuple[str, ...]]  # artifacts besides the dataset


def _baseline(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models import baselines

    return baselines.build(config.model, a.dataset.num_items)


def _sasrec(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.sasrec import SASRecRecommender

    return SASRecRecommender(config.model, a.dataset.num_items, config.data.max_history)


def _item_counts(config, a: Artifacts):
    """Each item's training count when ``model.popularity_penalty`` ranks with it, else None."""
    if not config.model.get("popularity_penalty", 0.0):
        return None
    from gr_jax.data.splits import train_item_counts

    return train_item_counts(a.dataset.users, a.dataset.num_items)


def _tiger(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.tiger import TigerRecommender

    return TigerRecommender(config.model, a.sid_table, item_counts=_item_counts(config, a))


def _prism(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.prism import PrismRecommender

    text = cf = None
    if config.model.dsi:
        text, cf = a.features.get("text"), a.features.get("cf")
    return PrismRecommender(config.model, a.sid_table, text, cf, item_counts=_item_counts(config, a))


def _pctx(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.pctx import PctxRecommender

    return PctxRecommender(config.model, a.sid_table)


def _qformer(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.qformer_pretrain import QFormerPretrainRecommender

    return QFormerPretrainRecommender(config.model, a.features)


def _two_tower(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.two_tower import TwoTowerRecommender

    return TwoTowerRecommender(config.model, a.features, pretrained_qformer)


def _crbr(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.crbr_recommender import CRBRRecommender

    return CRBRRecommender(config.model, a.features, pretrained_qformer)


def _latent(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.latent import LatentRecommender

    return LatentRecommender(config.model, a.features, pretrained_qformer)


def _gat(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.gat import GATRecommender

    if (config.model.freeze_backbone or config.model.sampler_dim) and not config.model.init_from:
        raise ValueError("model.freeze_backbone and model.sampler_dim train on top of a trained model: set "
                         "model.init_from to a finished gat run (configs/gat.py)")
    return GATRecommender(config.model, a.sid_table, a.features, a.dataset.users, pretrained_qformer,
                          frozen=tuple(config.train.frozen), categories=a.dataset.items.categories)


def _dccf(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.dccf import DCCFRecommender

    return DCCFRecommender(config.model, a.dataset.num_items, a.dataset.users)


def _semconv(config, a: Artifacts, pretrained_qformer=None):
    from gr_jax.models.semconv import SemConvRecommender
    from gr_jax.tokenizers.aligned import load_code_token_embeddings

    return SemConvRecommender(config.model, a.sid_table, a.dataset.items, a.path("features", "llm"),
                              load_code_token_embeddings(a.path("tokenize")), seed=config.seed)


def _none(config):
    return ()


MODELS: dict[str, Entry] = {
    "popularity": Entry(_baseline, _none),
    "cooccurrence": Entry(_baseline, _none),
    "sasrec": Entry(_sasrec, _none),
    "tiger": Entry(_tiger, lambda c: ("sid_table",)),
    "prism": Entry(_prism, lambda c: ("sid_table", "features") if c.model.dsi else ("sid_table",)),
    "pctx": Entry(_pctx, lambda c: ("sid_table",)),
    "qformer": Entry(_qformer, lambda c: ("features",)),
    "two_tower": Entry(_two_tower, lambda c: ("features",)),
    "crbr": Entry(_crbr, lambda c: ("features",)),
    "latent": Entry(_latent, lambda c: ("features",)),
    "gat": Entry(_gat, lambda c: ("sid_table", "features")),
    "dccf": Entry(_dccf, _none),
    "semconv": Entry(_semconv, lambda c: ("sid_table", "features")),
}


def entry(config: ml_collections.ConfigDict) -> Entry:
    check_choice("model.name", config.model.name)
    return MODELS[config.model.name]


def build(config: ml_collections.ConfigDict, artifacts: Artifacts, pretrained_qformer: dict | None = None):
    """The model of ``config.model.name``, built from ``artifacts`` (``gr_jax.stages.Artifacts``), with
    the precision of ``model.dtype``/``model.param_dtype`` when it trains."""
    model = entry(config).build(config, artifacts, pretrained_qformer)
    if model.trainable:
        model.set_precision(Precision.from_config(config.model))
    return model


def reads(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The artifacts besides the dataset that the model is built from."""
    return entry(config).reads(config)
