"""Q-Former pre-training (user modeling): ITC + masked-history reconstruction + query
orthogonality over frozen MiniLM text and SASRec CF item features; evaluated by retrieving with
the ITC score (max over the M query states) over the full catalogue.

Variants as ``configs/two_tower.py`` (default synthetic, ``:tiny``, ``:scientific``, same budget).
The Q-Former and loss knobs are ``two_tower.model_config()``'s: ``num_queries`` ... ``history_read``
shape the encoder, ``aux_temperature`` / ``aux_mask_ratio`` / ``aux_reconstruction_weight`` /
``aux_orthogonality_weight`` weigh the pre-training losses (here the whole loss, so ``aux_weight``
is unused and removed).
"""

import ml_collections

from configs import two_tower


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = two_tower.base_config("qformer", arg)
    m = c.model
    # Two-tower-only parts: the Set Transformer head, the item tower and its InfoNCE.
    for name in ("set_num_heads", "set_mlp_dim", "item_dim", "item_hidden_dim", "item_num_layers", "temperature",
                 "num_sampled_negatives", "aux_weight", "init_qformer_from"):
        del m[name]
    return c
