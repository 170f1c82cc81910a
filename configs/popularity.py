"""Popularity baseline: every user gets the most-interacted training items."""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("popularity", stages="data,train,eval")
    c.model = ml_collections.ConfigDict({"name": "popularity"})
    return common.apply_variant(c, arg)
