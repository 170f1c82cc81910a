"""Llama-style decoder-only LLM (Semantic Convergence): the Flax model with a KV-cache decode,
Hugging Face Llama/Qwen2 checkpoint import and export, and LoRA fine-tuning helpers."""

from gr_jax.llm.hf_import import CheckpointError, load_hf, load_tokenizer, read_config, save_hf
from gr_jax.llm.lora import lora_frozen_patterns, merge_adapters, trainable_paths, with_adapters
from gr_jax.llm.model import DecodeCache, LlamaConfig, LlamaModel, param_shardings, positions_and_mask

__all__ = ["CheckpointError", "DecodeCache", "LlamaConfig", "LlamaModel", "load_hf", "load_tokenizer",
           "lora_frozen_patterns", "merge_adapters", "param_shardings", "positions_and_mask", "read_config",
           "save_hf", "trainable_paths", "with_adapters"]
