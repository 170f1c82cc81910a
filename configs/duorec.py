"""DuoRec: SASRec + contrastive regularisation with supervised (same-target) positives.

Variants as ``configs/sasrec.py``.
"""

import ml_collections

from configs import sasrec

# DuoRec's knobs on top of SASRec's (also the context encoder of configs/pctx.py).
CONTRASTIVE = {"contrastive": "supervised", "contrastive_weight": 0.1, "contrastive_temperature": 1.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = sasrec.get_config(arg)
    c.name = "duorec"
    c.model.update(CONTRASTIVE)
    return c
