"""Popularity baseline: every user gets the most-interacted training items.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config("popularity", stages="data,train,eval")
    c.model = ml_collections.ConfigDict({"name": "popularity"})
    if arg == "tiny":
        common.use_tiny(c)
    elif arg == "scientific":
        common.use_scientific(c)
    return c
