"""The LLM's vocabulary for recommendation: a text tokenizer, item code tokens, item texts.

- ``train_text_tokenizer``: a byte-level BPE ``tokenizers.Tokenizer`` trained on the item texts and
  the prompt templates (the from-scratch configuration; an imported checkpoint brings its own
  ``tokenizer.json``).
- Item code tokens follow LC-Rec's names: level 0 code 12 is ``<a_12>``, level 1 ``<b_..>``, and so
  on. They are appended after the text vocabulary in level order (``CodeVocab``), so the token of
  (level l, code c) is ``offset + level_starts[l] + c``.
- ``item_text_targets``: an item's title in the LLM's token-embedding space (the mean of its title
  tokens' embedding rows), the target the alignment tokenizer pulls code embeddings toward.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def train_text_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> tokenizers.Tokenizer:
    """Byte-level BPE of at most ``vocab_size`` tokens (special tokens first: ``<pad>`` is id 0)."""
    tokenizer = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def special_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
    """Id of a special token; an imported tokenizer lacking it is an error naming the token."""
    index = tokenizer.token_to_id(token)
    if index is None:
        raise ValueError(f"the LLM tokenizer has no {token!r} token; the prompts need {SPECIAL_TOKENS}")
    return index


def level_letter(level: int) -> str:
    return string.ascii_lowercase[level]


@dataclasses.dataclass(frozen=True)
class CodeVocab:
    """Where the item code tokens sit in the LLM's vocabulary."""

    offset: int  # id of <a_0>: the size of the text vocabulary
    codebook_sizes: tuple[int, ...]

    @property
    def level_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]]).astype(np.int64)

    @property
    def size(self) -> int:
        return int(sum(self.codebook_sizes))

    def names(self) -> list[str]:
        return [f"<{level_letter(l)}_{c}>" for l, k in enumerate(self.codebook_sizes) for c in range(k)]

    def token_ids(self, codes: np.ndarray) -> np.ndarray:
        """Token ids of SID codes ``[..., L]`` (numpy or jax; the same shape)."""
        return codes + self.offset + self.level_starts.astype(np.int32)


def add_code_tokens(tokenizer: tokenizers.Tokenizer, codebook_sizes: Sequence[int]) -> CodeVocab:
    """Appends the code tokens to ``tokenizer`` (in place, as special tokens so text never splits
    into them) and returns where they sit; they must land right after the text vocabulary."""
    vocab = CodeVocab(tokenizer.get_vocab_size(with_added_tokens=True), tuple(int(k) for k in codebook_sizes))
    names = vocab.names()
    tokenizer.add_special_tokens(names)
    last = vocab.offset + vocab.size - 1
    if tokenizer.token_to_id(names[0]) != vocab.offset or tokenizer.token_to_id(names[-1]) != last:
        raise ValueError(f"the code tokens {names[0]}..{names[-1]} did not get consecutive ids after the text "
                         "vocabulary (the tokenizer already holds some of them?)")
    return vocab


def item_titles(titles: Sequence[str], categories: Sequence[Sequence[str]]) -> list[str]:
    """Each item's title, or its finest category when the title is empty."""
    return [t.strip() or (c[-1] if len(c) else "item") for t, c in zip(titles, categories)]


def encode_padded(tokenizer: tokenizers.Tokenizer, texts: Sequence[str],
                  max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[N, max_tokens]`` (truncated, right-padded with ``<pad>``) and their mask."""
    pad = special_id(tokenizer, PAD)
    ids = np.full((len(texts), max_tokens), pad, np.int32)
    mask = np.zeros((len(texts), max_tokens), bool)
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        tokens = encoding.ids[:max_tokens]
        ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, True
    return ids, mask


def item_text_targets(token_embeddings: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean token-embedding row of each item's text ``[N, D]`` (float32)."""
    rows = token_embeddings[ids] * mask[..., None]
    return (rows.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)).astype(np.float32)


def random_token_embeddings(vocab_size: int, dim: int, seed: int, stddev: float = 0.02) -> np.ndarray:
    """The from-scratch LLM's initial token table (the model's own ``normal(0.02)`` initialiser)."""
    return (np.random.default_rng(seed).standard_normal((vocab_size, dim)) * stddev).astype(np.float32)
