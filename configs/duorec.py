"""DuoRec: SASRec + contrastive regularisation with supervised (same-target) positives."""

import ml_collections

from configs import sasrec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = sasrec.get_config(arg)
    c.name = "duorec"
    c.model.contrastive = "supervised"
    c.model.contrastive_weight = 0.1
    c.model.contrastive_temperature = 1.0
    return c
