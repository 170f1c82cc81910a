"""Shared config sections and the data/budget of the variants. Every field is a knob a user may
override from the CLI; loading a config imports no JAX.

Each system's ``get_config(arg)`` resolves its own variant (``None`` = the synthetic default,
``tiny``, ``scientific``, ...) with the helpers below.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from gr_jax.data.synthetic import SyntheticConfig

SCIENTIFIC_DIR = "../shared/data/scientific"


def check_variant(arg: str | None, variants: tuple[str, ...]) -> None:
    if arg and arg not in variants:
        raise ValueError(f"unknown config variant {arg!r}; expected one of: {', '.join(variants)}")


def data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.format = "synthetic"  # synthetic | lcrec | amazon
    c.dir = ""  # raw files (lcrec/amazon); TFDS manual_dir
    c.name = ""  # lcrec: NAME of NAME.inter.json; amazon: category file prefix
    c.min_user_events = 3  # leave-one-out needs train + valid + test
    c.min_core = 5  # amazon: k-core filtering
    c.drop_unknown_items = False  # lcrec: drop (and count) events whose item is not in NAME.item.json
    c.max_history = 20  # most recent events kept as history
    c.workers = 0  # processes assembling training batches (0: in the trainer, Grain's reader threads)
    c.targets = "all"  # events that may be valid/test targets: all | positive (an exposure log's clicks)
    c.positives_only = False  # keep only events with a positive action (click/cart/buy); the rest are counted
    c.positive_rating = 4.0  # amazon: a rating >= this is a click
    c.negative_rating = 2.0  # amazon: a rating <= this is a skip (in between: a view)
    c.tfds_dir = ""  # where the ArrayRecord dataset is built; '' = WORKDIR/data/tfds
    c.synthetic = ml_collections.ConfigDict(dataclasses.asdict(SyntheticConfig()))
    return c


def train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 256  # global batch
    c.num_epochs = 20
    c.num_steps = 0  # > 0 overrides num_epochs
    c.learning_rate = 1e-3
    c.warmup_steps = 100
    c.schedule = "cosine"  # cosine | linear | constant (after warmup)
    c.weight_decay = 0.0
    c.grad_clip_norm = 1.0
    c.b1 = 0.9
    c.b2 = 0.98
    c.log_every_steps = 50
    c.eval_every_epochs = 1  # validation (and early stopping) cadence
    c.early_stop_patience = 5  # evaluations without valid ndcg@10 improvement; 0 disables
    c.checkpoint_keep = 2
    c.checkpoint_every_steps = 0  # extra 'latest' checkpoints between evaluations; 0 = at evaluations only
    c.checkpoint_every_minutes = 10.0  # and whenever this long has passed since the last one; 0 = off
    c.frozen = ()  # parameter paths kept fixed: prefixes ('qformer') or globs ('gat/blocks_*')
    return c


def eval_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.ks = (5, 10)
    c.list_size = 20  # ranked list length; mrr is truncated here
    c.batch_size = 256
    c.splits = "valid,test"
    c.tail_fraction = 0.5  # > 0: also report head/tail rows (tail = this fraction of least-frequent items)
    return c


def cache_config() -> ml_collections.ConfigDict:
    """The ``cache`` stage: every user's top-K served from an embedded store (``gr_jax.serving``)."""
    c = ml_collections.ConfigDict()
    c.k = 20  # top-K list length stored per user
    c.batch_size = 0  # users per model call and per write transaction; 0 = eval.batch_size
    c.progress_every = 10_000  # log build progress every this many users; 0 = never
    return c


def mesh_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = -1  # data-parallel axis size; -1 = all devices left after `model`
    c.model = 1  # tensor-parallel axis size
    return c


def sharding_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # logical axis -> mesh axis ('' = replicated)
    c.rules = (("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
               ("experts", "model"), ("embed", ""), ("kv", ""), ("seq", ""), ("codebook", ""))
    return c


def add_precision(model: ml_collections.ConfigDict) -> None:
    """Compute and parameter dtypes of a trainable model (``gr_jax.precision``): auto = bfloat16
    compute on GPU/TPU and float32 on CPU; parameters and optimizer state stay float32."""
    model.dtype = "auto"  # auto | float32 | bfloat16
    model.param_dtype = "float32"  # float32 | bfloat16


def base_config(name: str, stages: str) -> ml_collections.ConfigDict:
    """Top-level config with data/train/eval sections; systems add ``model`` (and what else they use)."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    c.stages = stages  # comma-separated stage names, run in order
    c.data = data_config()
    c.mesh = mesh_config()
    c.sharding = sharding_config()
    c.train = train_config()
    c.eval = eval_config()
    c.cache = cache_config()
    return c


def use_tiny(c: ml_collections.ConfigDict) -> None:
    """The ``:tiny`` variant's data and budget (what the tests run): 150 users x 100 items, one
    epoch at batch 32."""
    c.data.synthetic.update(num_users=150, num_items=100, branching=(3, 3, 2))
    c.train.update(batch_size=32, num_epochs=1, warmup_steps=2, log_every_steps=5)
    c.eval.batch_size = 64


def use_scientific(c: ml_collections.ConfigDict) -> None:
    """Amazon 2018 Industrial & Scientific in LC-Rec format (``--config.data.dir`` to move it)."""
    c.data.update(format="lcrec", dir=SCIENTIFIC_DIR, name="Scientific")
