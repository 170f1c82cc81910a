"""The features stage: item content embeddings (MiniLM over item text), collaborative
embeddings (the item table of a SASRec/DuoRec trained on the training split, or with
``features.cf.source='dccf'`` DCCF's propagated item vectors over the training split's graph) and,
with ``features.llm``, an LLM's vocabulary and each item's title in its token-embedding space.

Artifacts under ``WORKDIR/features/``: ``text_embeddings.npy`` ``[num_items, 384]``,
``cf_embeddings.npy`` ``[num_items, D]`` (plus the CF model's own run in ``cf/``), with
``features.cf.contexts`` ``event_contexts.npy`` ``[num_events, D]`` (the CF model's state at
every event, Pctx's context vectors), with ``features.llm`` ``llm_text_embeddings.npy``
``[num_items, D_llm]`` and ``llm/{tokenizer.json,token_embeddings.npy}``, and ``summary.json``.
The text cache is keyed by content, so reruns and other configs reuse it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import ml_collections
import numpy as np

from gr_jax.data.dataset import Dataset, Interactions

TEXT_FILE, CF_FILE, CONTEXT_FILE = "text_embeddings.npy", "cf_embeddings.npy", "event_contexts.npy"
LLM_TEXT_FILE, LLM_DIR, LLM_TABLE_FILE = "llm_text_embeddings.npy", "llm", "token_embeddings.npy"


@dataclasses.dataclass
class Features:
    text: np.ndarray | None = None
    cf: np.ndarray | None = None
    contexts: np.ndarray | None = None  # [num_events, D] CF-model state at every event (Pctx)
    llm_text: np.ndarray | None = None  # [num_items, D_llm] item text in the LLM's token-embedding space

    def get(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            section = {"llm_text": "llm", "contexts": "cf.contexts"}.get(name, name)
            raise ValueError(f"the '{name}' item embeddings were not computed; enable config.features.{section} "
                             "and run the features stage")
        return value


def _text_cache_dir(text: ml_collections.ConfigDict) -> str:
    return text.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "gr_jax", "text")


def cf_sections(cf: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """The (model, train) sections of the collaborative model ``features.cf.source`` selects."""
    if cf.get("source", "sasrec") == "dccf":
        return cf.dccf.model, cf.dccf.train
    return cf.model, cf.train


def cf_run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the collaborative model's own training run (same data/mesh/eval)."""
    model, train = cf_sections(config.features.cf)
    return ml_collections.ConfigDict({
        "name": f"{config.name}-cf", "seed": config.seed, "stages": "train", "data": config.data,
        "mesh": config.mesh, "sharding": config.sharding, "eval": config.eval, "model": model, "train": train})


def event_windows(interactions: Interactions, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Items ``[E, window]`` and mask of the window of events ending with each event (left-padded)."""
    from gr_jax.data.splits import event_window

    user = np.repeat(np.arange(len(interactions)), interactions.lengths)
    position = np.arange(len(interactions.items)) - interactions.offsets[user]
    flat, mask = event_window(interactions, user, position + 1, window)
    return np.where(mask, interactions.items[flat], 0), mask


def event_contexts(model, params, interactions: Interactions, window: int, batch_size: int = 1024) -> np.ndarray:
    """The sequence model's state at every event over the window ending with it ``[E, D]``
    (Pctx's context: the event's own item and up to ``window - 1`` before it)."""
    import jax

    from gr_jax.models.sasrec import SASRec

    items, mask = event_windows(interactions, window)
    states = jax.jit(lambda h, m: model.module.apply({"params": params}, h, m, method=SASRec.user_vector))
    pad = -len(items) % batch_size
    items, mask = np.pad(items, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
    out = [np.asarray(states(items[i:i + batch_size], mask[i:i + batch_size]))
           for i in range(0, len(items), batch_size)]
    return np.concatenate(out)[:len(interactions.items)].astype(np.float32)


def collaborative(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset):
    """Trains (or reuses) the CF model; returns its item table, the event contexts if enabled, a summary.

    Every process of a multi-process run calls it: the CF model trains over the global mesh like
    any other run, then process 0 writes the table and the contexts while the others wait and
    read them."""
    import jax

    from gr_jax.training import trainer
    from gr_jax.training.sharding import to_host

    out_dir = os.path.join(workdir, "features")
    primary = jax.process_index() == 0
    cf = config.features.cf
    source = cf.get("source", "sasrec")
    model_config, train_config = cf_sections(cf)
    path, context_path = os.path.join(out_dir, CF_FILE), os.path.join(out_dir, CONTEXT_FILE)
    key_path = os.path.join(out_dir, "cf_config.json")
    key = {"model": model_config.to_dict(), "train": train_config.to_dict(), "seed": config.seed,
           "max_history": config.data.max_history} | ({} if source == "sasrec" else {"source": source})
    key = json.dumps(key, sort_keys=True, default=str)
    cf_config = cf_run_config(config)
    if source == "dccf":
        from gr_jax.models.dccf import DCCFRecommender

        if cf.contexts:
            raise ValueError("features.cf.contexts needs a sequence model's state at every event; "
                             "features.cf.source='dccf' has none (use source='sasrec')")
        model = DCCFRecommender(model_config, dataset.num_items, dataset.users)
    else:
        from gr_jax.models.sasrec import SASRecRecommender

        model = SASRecRecommender(model_config, dataset.num_items, config.data.max_history)
    summary, params = {}, None
    # Every process decides before any writes (the first collective of training orders them).
    same = os.path.exists(path) and os.path.exists(key_path) and open(key_path).read() == key
    if same:
        logging.info("Reusing collaborative embeddings %s (same features.cf config)", path)
        table = np.load(path)
    else:
        tic = time.time()
        result = trainer.train(cf_config, os.path.join(out_dir, "cf"), model, dataset.users)
        params = to_host(result.params)
        table = np.asarray(model.item_embeddings(params), np.float32)
        if primary:
            np.save(path, table)
            with open(key_path, "w") as f:
                f.write(key)
        summary["train"] = result.summary | {"seconds": time.time() - tic}
    contexts = None
    if cf.contexts:
        if same and os.path.exists(context_path):
            contexts = np.load(context_path)
        else:
            if params is None:
                params = to_host(trainer.restore_best_params(os.path.join(out_dir, "cf"), model, dataset.users,
                                                             cf_config))
            if primary:
                contexts = event_contexts(model, params, dataset.users, config.data.max_history)
                np.save(context_path, contexts)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("gr_jax features.cf written")
        if cf.contexts and contexts is None:
            contexts = np.load(context_path)
    if contexts is not None:
        summary["contexts"] = {"shape": list(contexts.shape)}
    summary["shape"] = list(table.shape)
    return table, contexts, summary


def _llm_vocabulary(config: ml_collections.ConfigDict, out_dir: str, dataset: Dataset) -> tuple[np.ndarray, dict]:
    """Writes ``features/llm/{tokenizer.json, token_embeddings.npy}`` (a BPE trained on the item texts
    and templates with a seeded random table, or an imported checkpoint's tokenizer and table) and
    returns each item's title in that token-embedding space."""
    import shutil

    from gr_jax.llm import prompts, vocab
    from gr_jax.llm.hf_import import TOKENIZER_FILE, load_tokenizer, read_token_embeddings

    llm, tic = config.features.llm, time.time()
    llm_dir = os.path.join(out_dir, LLM_DIR)
    os.makedirs(llm_dir, exist_ok=True)
    titles = vocab.item_titles(dataset.items.title, dataset.items.categories)
    if llm.checkpoint:
        tokenizer, table = load_tokenizer(llm.checkpoint), read_token_embeddings(llm.checkpoint)
        shutil.copyfile(os.path.join(llm.checkpoint, TOKENIZER_FILE), os.path.join(llm_dir, TOKENIZER_FILE))
    else:
        queries = prompts.build_queries(titles, dataset.items.categories, config.seed)
        tokenizer = vocab.train_text_tokenizer(titles + queries + prompts.template_texts(), llm.vocab_size)
        tokenizer.save(os.path.join(llm_dir, TOKENIZER_FILE))
        table = vocab.random_token_embeddings(tokenizer.get_vocab_size(), llm.embed_dim, config.seed)
    np.save(os.path.join(llm_dir, LLM_TABLE_FILE), table)
    ids, mask = vocab.encode_padded(tokenizer, titles, llm.max_title_tokens)
    targets = vocab.item_text_targets(table, ids, mask)
    summary = {"vocab_size": tokenizer.get_vocab_size(), "embed_dim": int(table.shape[1]),
               "mean_title_tokens": float(mask.sum(1).mean()), "source": llm.checkpoint or "bpe",
               "seconds": time.time() - tic}
    logging.info("LLM vocabulary: %d text tokens (%s), titles %.1f tokens on average.", summary["vocab_size"],
                 summary["source"], summary["mean_title_tokens"])
    return targets, summary


def content_features(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset) -> tuple[Features, dict]:
    """Computes (or reuses from ``workdir``) the enabled content embeddings (item text, the LLM's
    vocabulary); returns them and a summary. The collaborative table is ``collaborative``'s."""
    from gr_jax.text.item_text import embed_items
    from gr_jax.text.minilm import TextEncoder

    out_dir = os.path.join(workdir, "features")
    os.makedirs(out_dir, exist_ok=True)
    features, summary = Features(), {}
    text_cfg = config.features.text
    if text_cfg.enabled:
        tic = time.time()
        encoder = TextEncoder.from_pretrained(max_length=text_cfg.max_length, batch_size=text_cfg.batch_size)
        features.text = embed_items(dataset.items, encoder, _text_cache_dir(text_cfg), text_cfg.template,
                                    text_cfg.max_length)
        np.save(os.path.join(out_dir, TEXT_FILE), features.text)
        summary["text"] = {"shape": list(features.text.shape), "seconds": time.time() - tic}
    if config.features.get("llm", {}).get("enabled", False):
        features.llm_text, summary["llm"] = _llm_vocabulary(config, out_dir, dataset)
        np.save(os.path.join(out_dir, LLM_TEXT_FILE), features.llm_text)
    return features, summary


def load_features(workdir: str) -> Features:
    """Embeddings a previous features stage left in ``workdir``."""
    load = lambda name: np.load(p) if os.path.exists(p := os.path.join(workdir, "features", name)) else None
    return Features(text=load(TEXT_FILE), cf=load(CF_FILE), contexts=load(CONTEXT_FILE), llm_text=load(LLM_TEXT_FILE))
