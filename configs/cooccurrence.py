"""Item-to-item co-occurrence baseline: transitions from the last few history items.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config("cooccurrence", stages="data,train,eval")
    c.model = ml_collections.ConfigDict()
    c.model.name = "cooccurrence"
    c.model.window = 3  # newest history items that vote
    c.model.horizon = 1  # count i -> j when j follows i within this many steps
    c.model.decay = 0.5  # vote weight per step of age
    if arg == "tiny":
        common.use_tiny(c)
    elif arg == "scientific":
        common.use_scientific(c)
        # Selected on valid NDCG@10 over a 60-point grid (bench/tune_baselines.py; BENCHMARKS.md).
        c.model.update(window=10, horizon=3, decay=0.3)
    return c
