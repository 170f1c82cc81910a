"""Semantic Convergence: a Llama-style LLM that speaks item codes, fine-tuned on four tasks.

The LLM (``gr_jax.llm.model``) reads one vocabulary of text tokens and item code tokens
(``<a_12><b_3><c_40><d_7>`` is an item's SID; ``gr_jax.llm.vocab``). Training mixes the tasks of
``gr_jax.llm.prompts`` in every batch: each task gets a fixed share of the batch's rows (in
proportion to ``model.tasks`` weights) and the loss is the mean cross-entropy over all response
tokens. Logits are computed only where a response token is predicted.

Initialisation: a from-scratch model takes its text-token rows from the features stage's table
(``features/llm/token_embeddings.npy``, the space the alignment tokenizer aligned to) and, when the
tokenizer was trained with the LLM alignment loss, the code-token rows from
``tokenize/code_token_embeddings.npy`` (each level's projected codewords, rescaled to the text
rows' RMS); otherwise code rows keep the random initialiser. ``model.checkpoint`` starts from an
imported Hugging Face Llama/Qwen2 directory instead (its own tokenizer and weights; code rows
appended).

Ranking: the sequential prompt is encoded once per user into a key/value cache, copied to the
beams, and the shared ``beam_search`` extends it one code token per level under the SID trie; a
level's log-probabilities are the full-vocabulary log-softmax read at that level's code tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers

from gr_jax.data.dataset import ItemTable
from gr_jax.decoding.beam_search import BeamState, beam_search, trie_children
from gr_jax.decoding.trie import TrieTables, build_trie, leaf_items
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.llm import prompts
from gr_jax.llm.lora import lora_frozen_patterns
from gr_jax.llm.model import DecodeCache, LlamaConfig, LlamaModel, positions_and_mask
from gr_jax.llm.vocab import CodeVocab, add_code_tokens, item_titles
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.precision import Precision
from gr_jax.tokenizers.sid_table import SIDTable

TOKENIZER_FILE, TOKEN_TABLE_FILE = "tokenizer.json", "token_embeddings.npy"
LLM_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
              "rope_theta", "rms_norm_eps", "tie_word_embeddings", "lora_rank", "lora_alpha", "lora_targets")


class SemConvRecommender(TrainableRecommender):
    """The LLM recommender over a static SID table.

    ``llm_dir``: the features stage's LLM vocabulary directory (``tokenizer.json`` and, from
    scratch, ``token_embeddings.npy``). ``code_embeddings`` ``[L, K, D]``: the aligned code-token
    rows (None: random code rows, the no-alignment ablation). ``unroll_decoding``: unroll the beam
    search's depth loop (only to count its FLOPs).
    """

    def __init__(self, model_config: ml_collections.ConfigDict, sid_table: SIDTable, items: ItemTable, llm_dir: str,
                 code_embeddings: np.ndarray | None = None, seed: int = 0, unroll_decoding: bool = False):
        if sid_table.personalized:
            raise ValueError("model.name='semconv' needs one SID per item; tokenizer.name='pctx' is personalized")
        c = model_config
        self.checkpoint = c.checkpoint
        source = c.checkpoint or llm_dir
        path = os.path.join(source, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: run the features stage with features.llm.enabled=True "
                                    "(or give model.checkpoint a Hugging Face directory with a tokenizer.json)")
        self.tokenizer = tokenizers.Tokenizer.from_file(path)
        self.text_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.code_vocab: CodeVocab = add_code_tokens(self.tokenizer, sid_table.codebook_sizes)
        largest = max(sid_table.codebook_sizes)
        needed = max(self.code_vocab.offset + self.code_vocab.size,
                     self.code_vocab.offset + int(self.code_vocab.level_starts[-1]) + largest)  # last level's slice
        vocab_size = -(-needed // c.vocab_multiple) * c.vocab_multiple
        if c.checkpoint:
            from gr_jax.llm.hf_import import read_config

            base = read_config(c.checkpoint, lora_rank=c.lora_rank, lora_alpha=c.lora_alpha,
                               lora_targets=tuple(c.lora_targets))
            self.base_vocab = base.vocab_size
            self.llm_config = dataclasses.replace(base, vocab_size=max(vocab_size, base.vocab_size))
            self.token_table = None
        else:
            self.llm_config = LlamaConfig(vocab_size=vocab_size,
                                          **{f: (tuple(c[f]) if f == "lora_targets" else c[f]) for f in LLM_FIELDS})
            self.token_table = np.load(os.path.join(llm_dir, TOKEN_TABLE_FILE))
            if self.token_table.shape != (self.text_vocab, c.hidden_size):
                raise ValueError(f"{llm_dir}/{TOKEN_TABLE_FILE} has shape {self.token_table.shape}; model.hidden_size="
                                 f"{c.hidden_size} and the {self.text_vocab}-token vocabulary need "
                                 f"({self.text_vocab}, {c.hidden_size}): set features.llm.embed_dim=model.hidden_size")
        self.code_embeddings = code_embeddings
        self.module = LlamaModel(self.llm_config)
        self.num_levels, self.largest_codebook = sid_table.num_levels, largest
        self.trie = build_trie(sid_table.codes, largest, model_config.get("trie", "auto"))
        self.children = TrieTables.of(self.trie)
        self.leaf_items = jnp.asarray(leaf_items(self.trie, sid_table.sid_item))
        titles = item_titles(items.title, items.categories)
        tables = prompts.make_tables(self.tokenizer, self.code_vocab, sid_table.codes, titles,
                                     prompts.build_queries(titles, items.categories, seed),
                                     c.max_title_tokens, c.max_query_tokens)
        self.builder = prompts.PromptBuilder(tables, c.history_items, c.num_candidates, len(sid_table.codes))
        self.task_weights = {t: float(c.tasks[t]) for t in prompts.TASKS}
        if not any(self.task_weights.values()):
            raise ValueError(f"model.tasks={self.task_weights}: every weight is 0; give at least one task a weight")
        self.beam_size = c.beam_size
        self.unroll_decoding = unroll_decoding
        if c.lora_rank:  # the base transformer freezes; the token table stays trainable for the code rows
            self.frozen = tuple(p for p in lora_frozen_patterns() if not p.endswith("/embedding"))

    def set_precision(self, precision: Precision) -> None:
        super().set_precision(precision)
        self.llm_config = dataclasses.replace(self.llm_config, dtype=precision.compute, param_dtype=precision.params)
        self.module = LlamaModel(self.llm_config)

    # ------------------------------------------------------------------------------- training

    def init(self, rng: jax.Array, batch: dict):
        example = self.builder.seq(batch, rng)
        tokens = example.tokens
        params = self.module.init(rng, tokens, *positions_and_mask(example.valid))["params"]
        return self._initial_rows(params)

    def _initial_rows(self, params):
        """Text rows from the imported checkpoint or the features table (from scratch), then the
        aligned code rows when given (rescaled to the text rows' RMS)."""
        if self.checkpoint:
            from gr_jax.llm.hf_import import load_params

            base = load_params(self.checkpoint, dataclasses.replace(self.llm_config, vocab_size=self.base_vocab,
                                                                    lora_rank=0))
            params = _merge_checkpoint(params, base, self.base_vocab)
        boxed = params["embed_tokens"]["embedding"]
        table = nn.meta.unbox(boxed)
        if not self.checkpoint:
            table = table.at[:self.text_vocab].set(jnp.asarray(self.token_table, table.dtype))
        if self.code_embeddings is not None:
            rows = np.concatenate([level[:size] for level, size in zip(self.code_embeddings,
                                                                       self.code_vocab.codebook_sizes)])
            text_rms = jnp.sqrt(jnp.mean(jnp.square(table[:self.text_vocab].astype(jnp.float32))))
            rows = jnp.asarray(rows / max(float(np.sqrt(np.mean(np.square(rows)))), 1e-12)) * text_rms
            start = self.code_vocab.offset
            table = table.at[start:start + len(rows)].set(rows.astype(table.dtype))
        new = boxed.replace_boxed(table) if isinstance(boxed, nn.meta.AxisMetadata) else table
        return params | {"embed_tokens": params["embed_tokens"] | {"embedding": new}}

    def response_nll(self, params, example: prompts.Example) -> tuple[jax.Array, jax.Array]:
        """Summed cross-entropy of the response tokens and their count."""
        prompt_len, response_len = example.prompt.shape[1], example.response.shape[1]
        positions, mask = positions_and_mask(example.valid)

        def forward(module, tokens):
            hidden = module.hidden_states(tokens, positions, mask)
            return module.logits(hidden[:, prompt_len - 1:prompt_len + response_len - 1])

        logits = self.module.apply({"params": params}, example.tokens, method=forward)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, example.response[..., None], -1)[..., 0]
        weights = example.response_valid.astype(jnp.float32)
        return (nll * weights).sum(), weights.sum()

    def task_rows(self, batch_size: int) -> dict[str, int]:
        return prompts.task_rows(self.task_weights, batch_size)

    def loss(self, params, batch: dict, rng: jax.Array, step=None):
        del step
        total, count, metrics, start = 0.0, 0.0, {}, 0
        for i, (task, rows) in enumerate(self.task_rows(len(batch["target"])).items()):
            part = {k: batch[k][start:start + rows] for k in ("history", "history_mask", "target")}
            nll, tokens = self.response_nll(params, self.builder.build(task, part, jax.random.fold_in(rng, i)))
            metrics[f"nll_{task}"] = nll / tokens
            total, count, start = total + nll, count + tokens, start + rows
        return total / count, metrics

    def log_examples(self, batch: dict) -> None:
        rng = jax.random.PRNGKey(0)
        for task, _ in self.task_rows(len(batch["target"])).items():
            first = {k: jnp.asarray(batch[k][:1]) for k in ("history", "history_mask", "target")}
            example = self.builder.build(task, first, rng)
            prompt = np.asarray(example.prompt[0])[np.asarray(example.prompt_valid[0])]
            response = np.asarray(example.response[0])[np.asarray(example.response_valid[0])]
            logging.info("task %s\n  prompt:   %s\n  response: %s", task,
                         self.tokenizer.decode(prompt.tolist(), skip_special_tokens=False),
                         self.tokenizer.decode(response.tolist(), skip_special_tokens=False))

    # -------------------------------------------------------------------------------- ranking

    def search(self, params, batch: dict, beam_size: int) -> BeamState:
        """Trie-constrained beam search over code tokens after the sequential prompt."""
        example = self.builder.seq(batch, None)
        prompt, valid = example.prompt, example.prompt_valid
        batch_size, prompt_len = prompt.shape
        variables = {"params": params}
        cache_size = prompt_len - 1 + self.num_levels  # the last code token is never fed back
        _, cache = self.module.apply(variables, prompt[:, :-1], valid[:, :-1], cache_size,
                                     method=LlamaModel.prefill)
        cache = jax.tree.map(lambda x: jnp.repeat(x[:, None], beam_size, 1), cache)  # [B, W, ...]
        last_prompt_token, first_position = prompt[:, -1], valid.sum(1) - 1
        starts = jnp.asarray(self.code_vocab.offset + self.code_vocab.level_starts, jnp.int32)

        def step(cache: DecodeCache, previous, level):
            code_token = starts[jnp.maximum(level - 1, 0)] + previous
            token = jnp.where(level == 0, last_prompt_token[:, None], code_token)  # [B, W]
            position = jnp.broadcast_to((first_position + level)[:, None], token.shape)
            flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), cache)
            logits, flat = self.module.apply(variables, token.reshape(-1), position.reshape(-1), flat,
                                             prompt_len - 1 + level, method=LlamaModel.step)
            log_probs = jax.lax.dynamic_slice_in_dim(jax.nn.log_softmax(logits, -1), starts[level],
                                                     self.largest_codebook, axis=-1)
            unflat = jax.tree.map(lambda x: x.reshape((batch_size, beam_size) + x.shape[1:]), flat)
            return log_probs.reshape(batch_size, beam_size, -1), unflat

        return beam_search(step, cache, trie_children(self.children), self.num_levels, batch_size, beam_size,
                           unroll=self.unroll_decoding)

    def topk(self, params, batch: dict, k: int) -> jax.Array:
        sids, _ = self.search(params, batch, max(self.beam_size, k)).results()
        return expand_sid_ranking(sids, self.leaf_items, k)


def _merge_checkpoint(params: dict, base: dict, base_vocab: int) -> dict:
    """``params`` (fresh, vocabulary with code tokens, maybe adapters) with every base tensor of the
    imported checkpoint, whose embedding and head cover the first ``base_vocab`` rows."""
    from flax import traverse_util

    flat, imported = traverse_util.flatten_dict(params), traverse_util.flatten_dict(base)
    for path, value in imported.items():
        boxed = flat[path]
        current = nn.meta.unbox(boxed)
        if current.shape == value.shape:
            new = jnp.asarray(value, current.dtype)
        elif path[-1] == "embedding":
            new = current.at[:base_vocab].set(jnp.asarray(value, current.dtype))
        else:  # the untied LM head: [hidden, vocab]
            new = current.at[..., :base_vocab].set(jnp.asarray(value, current.dtype))
        flat[path] = boxed.replace_boxed(new) if isinstance(boxed, nn.meta.AxisMetadata) else new
    return traverse_util.unflatten_dict(flat)
