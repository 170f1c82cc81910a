"""Every string option of the configs with its valid values, checked when a config is loaded.

One home for the choices: the modules that implement an option check it with ``check_choice``
too, so library users get the same message. Importing this module needs no JAX.
"""

from __future__ import annotations

from typing import Any

MODEL_NAMES = ("popularity", "cooccurrence", "sasrec", "tiger", "prism", "pctx", "qformer", "two_tower", "crbr",
               "latent", "gat", "dccf", "semconv")
TOKENIZERS = ("rq_vae", "rq_kmeans", "prism", "pctx", "aligned", "index_json")
FEATURE_SOURCES = ("text", "cf", "text+cf")

# A config path matches the longest key that ends it (``features.cf.model.loss`` -> ``model.loss``).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("synthetic", "lcrec", "amazon"),
    "data.targets": ("all", "positive"),
    "model.trie": ("auto", "dense", "compact"),
    "model.retrieval": ("beam", "dense", "hybrid"),
    "model.dense_item": ("codes_id", "text", "codes_id_text"),
    "model.dense_loss": ("softmax", "infonce"),
    "train.schedule": ("cosine", "linear", "constant"),
    "eval.index": ("exact", "scann"),
    "model.name": MODEL_NAMES,
    "model.loss": ("ce", "sampled_softmax", "bce"),
    "model.contrastive": ("none", "unsupervised", "supervised"),
    "dropout_impl": ("hash", "threefry"),
    "model.target_action": ("view", "click", "cart", "buy", "skip"),
    "model.dsi_fusion": ("moe", "gate"),
    "model.history_read": ("first", "every"),
    "model.item_features": FEATURE_SOURCES,
    "model.alignment_layers": ("every", "last"),
    "tokenizer.name": TOKENIZERS,
    "tokenizer.input": FEATURE_SOURCES,
    "tokenizer.collisions": ("dedup_digit", "reassign", "none"),
    "optimizer": ("adamw", "adam", "adagrad", "sgd"),
    "recon_loss": ("mse", "cosine"),
    "residual": ("euclidean", "tangent"),
    "quant_loss_reduction": ("mean", "sum"),
    "tag_embedding": ("mean_text", "learned"),
    "model.layer_combination": ("sum", "mean"),
    "features.cf.source": ("sasrec", "dccf"),
    "model.dtype": ("auto", "float32", "bfloat16"),
    "model.param_dtype": ("auto", "float32", "bfloat16"),
}


# Numeric fields and the least value each may take (a config path matches the longest key that
# ends it): ``(minimum, inclusive)``.
MINIMUMS: dict[str, tuple[float, bool]] = {
    "train.learning_rate": (0.0, True), "train.batch_size": (1, True), "train.num_epochs": (0, True),
    "train.num_steps": (0, True), "train.warmup_steps": (0, True), "train.weight_decay": (0.0, True),
    "train.grad_clip_norm": (0.0, False), "train.eval_every_epochs": (0.0, False),
    "train.checkpoint_keep": (1, True), "train.checkpoint_every_minutes": (0.0, True),
    "eval.list_size": (1, True), "eval.batch_size": (1, True), "data.max_history": (1, True),
    "data.min_user_events": (3, True), "beam_size": (1, True), "dropout": (0.0, True),
    "learning_rate": (0.0, True), "codebook_size": (1, True), "num_levels": (1, True),
    "index_json_codebook_size": (0, True), "model.vocab_multiple": (1, True), "data.workers": (0, True),
    "cache.k": (1, True), "cache.batch_size": (0, True), "cache.progress_every": (0, True),
    "model.num_intents": (0, True), "model.contrastive_temperature": (0.0, False),
    "tokenizer.aligned.align_weight": (0.0, True),
    "model.tasks.seq": (0.0, True), "model.tasks.item2code": (0.0, True), "model.tasks.code2item": (0.0, True),
    "model.tasks.query": (0.0, True), "model.tasks.negative": (0.0, True), "model.history_items": (1, True),
    "model.num_candidates": (2, True), "model.lora_rank": (0, True), "model.max_title_tokens": (1, True),
    "model.max_query_tokens": (1, True), "features.llm.vocab_size": (260, True),  # byte-level BPE: 256 bytes + 4
    "features.llm.embed_dim": (2, True), "features.llm.max_title_tokens": (1, True),
    "model.seed_prompt_prob": (0.0, True), "model.explore_prob": (0.0, True), "model.category_prompt_prob": (0.0, True),
    "model.seed_neighbours": (1, True), "model.sampler_dim": (0, True), "model.category_level": (0, True),
    "model.negatives_per_positive": (0, True), "rq_kmeans.chunk_size": (0, True),
    "model.num_levels": (2, True), "model.leaf_size": (1, True), "model.num_sampled_negatives": (0, True),
    "model.margin_delta": (0.0, True), "model.residual_weight": (0.0, True), "model.margin_weight": (0.0, True),
    "model.entropy_weight": (0.0, True), "model.orthogonality_weight": (0.0, True), "model.match_weight": (0.0, True),
    "model.quantization_weight": (0.0, True), "model.reconstruction_weight": (0.0, True),
    "model.commitment_beta": (0.0, True), "model.assignment_temperature": (0.0, False),
    "model.gumbel_temperature": (0.0, False), "model.gumbel_temperature_min": (0.0, False),
    "model.gumbel_decay_rate": (0.0, True), "model.dense_weight": (0.0, True), "model.hybrid_gen_weight": (0.0, True),
    "model.hybrid_dense_slots": (0, True), "model.popularity_penalty": (0.0, True),
}
# The most each may take: ``(maximum, inclusive)``.
MAXIMUMS: dict[str, tuple[float, bool]] = {
    "dropout": (1.0, False), "model.seed_prompt_prob": (1.0, True), "model.explore_prob": (1.0, True),
    "model.category_prompt_prob": (1.0, True),
}


class ConfigError(ValueError):
    """A config field holds a value the code cannot run; the message names the field and the fix."""


def choices(path: str) -> tuple[str, ...] | None:
    """The valid values of the field at dotted ``path``, or None when it is not a string option."""
    return _match(CHOICES, path)


def check_choice(path: str, value: Any) -> None:
    """Raises ``ConfigError`` unless ``value`` is one of the choices of ``path``."""
    valid = choices(path)
    if valid is not None and value not in valid:
        raise ConfigError(f"{path}={value!r}; expected one of {', '.join(valid)}")


def _match(table: dict, path: str):
    """The entry of ``table`` for the longest key that ends dotted ``path`` (None when none does)."""
    parts = path.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:])
        if key in table:
            return table[key]
    return None


def check_range(path: str, value: Any) -> None:
    """Raises ``ConfigError`` when a numeric field is outside its valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = _match(MINIMUMS, path), _match(MAXIMUMS, path)
    if low is not None and (value < low[0] or (value == low[0] and not low[1])):
        raise ConfigError(f"{path}={value}; it must be {'at least' if low[1] else 'above'} {low[0]}")
    if high is not None and (value > high[0] or (value == high[0] and not high[1])):
        raise ConfigError(f"{path}={value}; it must be {'at most' if high[1] else 'below'} {high[0]}")


def _leaves(section: Any, prefix: str = ""):
    for key, value in section.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def validate(config: Any) -> None:
    """Checks every string option and numeric range of a loaded ``ml_collections.ConfigDict`` and
    that the tokenizer it names has its settings section."""
    for path, value in _leaves(config):
        check_choice(path, value)
        check_range(path, value)
    tokenizer = config.get("tokenizer")
    if tokenizer is not None and tokenizer.name != "index_json" and tokenizer.name not in tokenizer:
        present = [name for name in TOKENIZERS if name in tokenizer]
        raise ConfigError(f"tokenizer.name={tokenizer.name!r}, but this config only carries the settings of "
                          f"{present}; use the system config that fits (e.g. configs/rqkmeans.py), or train on "
                          f"another run's SIDs with tokenizer.name='index_json' and tokenizer.index_json=<its "
                          f"tokenize/index.json>")
