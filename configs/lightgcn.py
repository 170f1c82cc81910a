"""LightGCN (He et al., SIGIR 2020): DCCF (``configs/dccf.py``) with ``dccf.LIGHTGCN``'s switches,
i.e. ``E_{l+1} = D^-1/2 A D^-1/2 E_l``, the mean of the layers, BPR + L2.

Variants as ``configs/dccf.py``. Its steps are ~10x cheaper than DCCF's (no intent, augmented or
contrastive terms), so it trains for more epochs; ``learning_rate`` and ``embedding_reg`` were
picked on Scientific's validation R@10 (learning rate 1e-3 and 1e-2 at reg 2.5e-5, then at 1e-2
reg 0, 1e-6, 2.5e-6, 5e-6; DCCF did worse at 1e-2 and keeps the paper's 1e-3).
"""

import ml_collections

from configs import dccf


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = dccf.get_config(arg)
    c.name = "lightgcn"
    c.model.update(dccf.LIGHTGCN)
    c.model.embedding_reg = 1e-6
    c.train.learning_rate = 1e-2
    if arg != "tiny":
        c.train.update(num_epochs=50, eval_every_epochs=2, early_stop_patience=5)
    return c
