"""Q-Former pre-training behind the trainer's model interface (``configs/qformer.py``).

- Loss: ``QFormerUserTower.loss`` alone: ITC (query set vs next item), masked-history
  reconstruction and query orthogonality, weighted by ``model.aux_*`` (the same knobs that add
  these losses to the two-tower and CRBR models as auxiliaries).
- Retrieval (``topk``): the ITC score itself, ``max_m cos(query state m, item)`` with the item
  side the Q-Former's learned projection of the frozen features, over the whole catalogue; the
  catalogue's item embeddings are computed once per evaluation round (``eval_params``). So the
  shared Recall/NDCG evaluation measures what pre-training learned, with no fine-tuning.
- Fine-tuning: ``two_tower`` and ``crbr`` start their Q-Former from such a run with
  ``--config.model.init_qformer_from=WORKDIR`` (``load_pretrained_qformer``).

Params: ``{"qformer"}``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from gr_jax.data.dataset import Interactions
from gr_jax.models.two_tower import QFormerBase
from gr_jax.models.user_tower import QFormer
from gr_jax.tokenizers.rq_vae import l2_normalize
from gr_jax.training import trainer


class QFormerPretrainRecommender(QFormerBase):
    """``init``, ``loss``, ``topk``, ``item_embeddings``, ``query_set`` of a Q-Former trained on its
    pre-training losses."""

    def init(self, rng: jax.Array, batch: dict) -> dict:
        return {"qformer": self.qformer_tower.init(rng, self.qformer_batch(batch))}

    def loss(self, params: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        return self.qformer_tower.loss(params["qformer"], self.qformer_batch(batch), rng)

    def item_embeddings(self, params: dict) -> jax.Array:
        """Unit ITC item embeddings of the whole catalogue ``[N, D]``."""
        return l2_normalize(self.qformer.apply({"params": params["qformer"]}, self.features,
                                               method=QFormer.embed_items))

    def query_set(self, params: dict, batch: dict) -> jax.Array:
        """The M unit query states ``[B, M, D]``: merged by max score, retrieval ranks by the ITC score."""
        return l2_normalize(self.query_states(params, batch))


# Q-Former fields that shape its parameters: a fine-tuning run must match its pre-training run on these.
SHAPE_FIELDS = ("item_features", "num_queries", "embed_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                "history_read")


def load_pretrained_qformer(run_dir: str, model_config: ml_collections.ConfigDict, features,
                            interactions: Interactions) -> dict:
    """The Q-Former params (encoder and reconstruction decoder) of the best checkpoint of the
    finished ``qformer`` run in ``run_dir`` (its WORKDIR), checked against ``model_config``."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.init_qformer_from={run_dir!r}: {path} not found; give the WORKDIR of a "
                                "finished qformer run (python -m gr_jax.main --config=configs/qformer.py ...)")
    with open(path) as f:
        pretraining = ml_collections.ConfigDict(json.load(f))
    if pretraining.model.name != "qformer":
        raise ValueError(f"model.init_qformer_from={run_dir!r} is a {pretraining.model.name!r} run; expected a "
                         "qformer (pre-training) run")
    mismatched = {f: (pretraining.model[f], model_config[f]) for f in SHAPE_FIELDS
                  if pretraining.model[f] != model_config[f]}
    if mismatched:
        raise ValueError(f"model.init_qformer_from={run_dir!r}: the Q-Former differs from the pre-trained one in "
                         + ", ".join(f"model.{f} (pre-trained {a!r}, here {b!r})" for f, (a, b) in mismatched.items())
                         + "; set these fields to the pre-training run's values")
    model = QFormerPretrainRecommender(pretraining.model, features)
    return trainer.restore_best_params(os.path.join(run_dir, "train"), model, interactions, pretraining)["qformer"]
