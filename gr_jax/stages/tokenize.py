"""The tokenize stage: item embeddings -> SID table artifact + codebook health report.

``pctx`` writes a personalized table: several SIDs per item and the SID of every event
(``gr_jax.tokenizers.pctx_tokenizer``), from the features stage's event contexts and text.

Reads the embeddings named by ``tokenizer.input`` from the features stage (or imports an
LC-Rec ``index.json``; ``prism`` reads both the text and the CF embeddings plus each item's
training-split popularity and category path; ``aligned`` also the LLM text targets), fits the configured tokenizer,
resolves collisions, checks codebook health against the configured thresholds (a failed check stops the pipeline
with what usually fixes it), and writes ``WORKDIR/tokenize/{sid_table.npz,sid_table.json,index.json,
health.json,health.png,summary.json}``, plus for ``aligned`` (alignment on) ``code_token_embeddings.npy``
(``tokenizers.aligned.load_code_token_embeddings``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from gr_jax.config_schema import check_choice
from gr_jax.data.dataset import Dataset
from gr_jax.stages.features import Features
from gr_jax.tokenizers import collisions, health, pctx_tokenizer
from gr_jax.tokenizers.sid_table import SIDTable


def input_embeddings(features: Features, spec: str) -> np.ndarray:
    """``'text'``, ``'cf'`` or ``'text+cf'`` (each part L2-normalised, then concatenated)."""
    check_choice("tokenizer.input", spec)
    arrays = [features.get(p) for p in spec.split("+")]
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate([a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays], 1)


def residual_energy(z: np.ndarray, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Mean squared norm of the residual entering each level, then of the final error (``L + 1`` values)."""
    r = np.asarray(z, np.float64)
    energy = [float(np.mean(np.sum(r * r, 1)))]
    for level in range(codes.shape[1]):
        r = r - codebooks[level][codes[:, level]]
        energy.append(float(np.mean(np.sum(r * r, 1))))
    return np.array(energy)


@dataclasses.dataclass
class TokenizerFit:
    """What a fitted tokenizer hands to the stage."""

    codes: np.ndarray  # int32 [N, L] before collision handling
    codebooks: np.ndarray  # [L, K, d]
    residual_energy: np.ndarray  # [L + 1] mean squared residual norm entering each level, then the error
    recon_error: float
    last_level_costs: Callable[[], np.ndarray] | None  # for collisions='reassign'
    info: dict


def latent_fit(latents: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, info: dict,
               last_level_costs: Callable[[], np.ndarray] | None = None) -> TokenizerFit:
    """The ``TokenizerFit`` of an encoder + residual quantizer: residual energies of the latents and,
    as ``recon_error``, the relative quantisation error in the latent space (the decoder's error is
    in ``info["final_loss"]``)."""
    energy = residual_energy(latents, codes, codebooks)
    return TokenizerFit(codes, codebooks, energy, float(energy[-1] / energy[0]), last_level_costs, info)


def _fit_rq_vae(x: np.ndarray, cfg: ml_collections.ConfigDict) -> TokenizerFit:
    from gr_jax.tokenizers.configs import RQVAEConfig
    from gr_jax.tokenizers.rq_vae_training import fit_rq_vae

    tic = time.time()
    result = fit_rq_vae(x, RQVAEConfig(**cfg.to_dict()))
    return latent_fit(result.latents, result.codes, result.codebooks,
                      {"final_loss": result.loss_history[-1], "fit_seconds": time.time() - tic})


def _fit_rq_kmeans(x: np.ndarray, cfg: ml_collections.ConfigDict) -> TokenizerFit:
    from gr_jax.tokenizers import rq_kmeans

    result = rq_kmeans.fit_rq_kmeans(x, rq_kmeans.RQKMeansConfig(**cfg.to_dict()))
    return TokenizerFit(result.codes, result.codebooks, result.residual_energy, result.recon_error,
                        lambda: result.last_level_costs(x), {"fit_seconds": result.fit_seconds})


def fit_prism(dataset: Dataset, features: Features, cfg: ml_collections.ConfigDict) -> TokenizerFit:
    """PRISM's purified semantic quantizer on ``features.text`` and ``features.cf``.

    Popularity: ``log1p`` of each item's training-split interaction count, min-max scaled.
    Tags: RQ layer ``l`` gets category path level ``l + tag_level_offset``; the default offset -1
    skips the leading levels that hold a single value (Amazon's root, e.g. 'Industrial &
    Scientific'), i.e. layer ``l`` <-> level ``l + 1`` as in SPEC §3 on Amazon data, while a
    catalogue whose top level varies (the synthetic tree) keeps it. Missing levels are masked."""
    from gr_jax.data.splits import train_item_counts
    from gr_jax.tokenizers import prism_quantizer as pq

    config = pq.PrismConfig(**cfg.to_dict())
    text, cf = features.get("text"), features.get("cf")
    counts = train_item_counts(dataset.users, dataset.num_items)
    popularity = pq.popularity_scores(counts)
    tags = pq.category_tags(dataset.items.categories, config.num_levels, config.tag_level_offset)
    result = pq.fit_prism_quantizer(text, cf, popularity, tags.ids, config, num_tags=tags.sizes)
    info = {"final_loss": result.loss_history[-1], "fit_seconds": result.fit_seconds,
            "tag_level_offset": tags.level_offset, "num_tags": list(tags.sizes),
            "tagged_fraction": [float(v) for v in (tags.ids >= 0).mean(0)],
            "category_purity": [pq.category_purity(result.codes[:, l], tags.ids[:, l])
                                for l in range(config.num_levels)]}
    if result.gate_mean is not None:
        order = lambda v: np.argsort(np.argsort(v))
        info["gate"] = {"mean": float(result.gate_mean.mean()), "std": float(result.gate_mean.std()),
                        "spearman_popularity": float(np.corrcoef(order(result.gate_mean), order(popularity))[0, 1])}
    return latent_fit(result.latents, result.codes, result.codebooks, info)


def fit_aligned_tokenizer(features: Features, tok: ml_collections.ConfigDict) -> tuple[TokenizerFit, np.ndarray | None]:
    """Semantic Convergence's Alignment Tokenization (``tokenizers.aligned``) of the ``tokenizer.input``
    embeddings toward the LLM text targets ``features.llm_text`` (not read when ``align_weight`` is
    0); returns the fit and the code-token embeddings ``[L, K, D_llm]`` (None without alignment)."""
    from gr_jax.tokenizers import aligned

    config = aligned.AlignedConfig(**tok.aligned.to_dict())
    targets = features.get("llm_text") if config.align_weight > 0 else None
    result, embeddings = aligned.fit_aligned(input_embeddings(features, tok.input), targets, config)
    return latent_fit(result.latents, result.codes, result.codebooks, result.info, result.last_level_costs), embeddings


def fit_tokenizer(x: np.ndarray, tok: ml_collections.ConfigDict) -> TokenizerFit:
    """Fits ``tok.name`` (rq_vae | rq_kmeans) with its sub-config on embeddings ``x`` (``prism``
    needs the dataset too: ``fit_prism``; ``aligned`` the LLM text targets: ``fit_aligned_tokenizer``)."""
    fits = {"rq_vae": _fit_rq_vae, "rq_kmeans": _fit_rq_kmeans}
    if tok.name not in fits:
        raise ValueError(f"tokenizer.name={tok.name!r} is not fitted on one embedding table; expected one of "
                         f"{tuple(fits)} (prism: fit_prism; aligned: fit_aligned_tokenizer; "
                         f"pctx: tokenize_personalized)")
    return fits[tok.name](x, tok[tok.name])


def resolve_collisions(codes: np.ndarray, mode: str, last_level_costs) -> np.ndarray:
    if mode == "dedup_digit":
        return collisions.add_dedup_digit(codes)
    if mode == "reassign":
        if last_level_costs is None:
            raise ValueError("tokenizer.collisions='reassign' needs last-level costs; use rq_kmeans, aligned or "
                             "dedup_digit")
        return collisions.reassign_last_level(codes, last_level_costs())
    check_choice("tokenizer.collisions", mode)
    return codes


def sid_table_from_fit(fit: TokenizerFit, tok: ml_collections.ConfigDict) -> SIDTable:
    """Resolves collisions as configured and packs the codes into a SID table."""
    final = resolve_collisions(fit.codes, tok.collisions, fit.last_level_costs)
    sizes = (fit.codebooks.shape[1],) * fit.codes.shape[1]
    if final.shape[1] > fit.codes.shape[1]:  # a de-dup digit
        sizes += (int(final[:, -1].max()) + 1,)
    return SIDTable(final.astype(np.int32), sizes, codebooks=list(fit.codebooks),
                    meta={"tokenizer": tok.name, "input": "text+cf" if tok.name == "prism" else tok.input,
                          "collisions": tok.collisions})


def thresholds(cfg: ml_collections.ConfigDict) -> health.HealthThresholds:
    """Health limits from config; a negative value disables that check."""
    values = {f.name: cfg[f.name] for f in dataclasses.fields(health.HealthThresholds)}
    return health.HealthThresholds(**{k: (None if v is None or v < 0 else v) for k, v in values.items()})


def tokenize_personalized(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset,
                          features: Features) -> tuple[SIDTable, dict]:
    """Pctx: context centroids of every item -> one SID per (item, context) and every event's SID."""
    from gr_jax.data.splits import train_event_mask

    tok, out_dir, tic = config.tokenizer, os.path.join(workdir, "tokenize"), time.time()
    if features.contexts is None:
        raise ValueError("tokenizer.name='pctx' needs the event contexts: enable config.features.cf (a DuoRec) and "
                         "config.features.cf.contexts, and run the features stage")
    cfg = pctx_tokenizer.PctxConfig(**tok.pctx.to_dict())
    table, info = pctx_tokenizer.fit_pctx(features.contexts, dataset.users.items, train_event_mask(dataset.users),
                                features.get("text"), cfg)
    table.validate(dataset.num_items, len(dataset.users.items))
    levels = cfg.num_levels
    report = health.compute_health(table.codes[:, :levels], table.codebook_sizes[:levels],
                                   residual_energy=info.pop("residual_energy"), recon_error=info["recon_error"])
    json_path, png_path = health.write_health(report, out_dir)
    print(health.format_health(report), flush=True)
    table.save(out_dir)
    summary = {"tokenizer": "pctx", "num_levels": table.num_levels, "codebook_sizes": list(table.codebook_sizes),
               "health": json_path, "health_png": png_path, "seconds": time.time() - tic} | info
    if tok.health.enforce:  # SIDs are unique by construction (collision digit), so collisions are not checked
        limits = dataclasses.replace(thresholds(tok.health), max_collision_rate=None)
        health.check_health(report, limits)
    logging.info("Pctx: %d SIDs for %d items (%.2f per item; %d centroids before merging).", info["num_sids"],
                 dataset.num_items, info["mean_sids_per_item"]["final"], info["num_centroids"])
    return table, summary


def write_sids(table: SIDTable, report: health.HealthReport, out_dir: str, item_keys: list[str]) -> tuple[str, str]:
    """Writes a static SID table (``sid_table.*``, ``index.json``) and its health report (printed,
    ``health.json``, ``health.png``) into ``out_dir``; returns the report's paths."""
    paths = health.write_health(report, out_dir)
    print(health.format_health(report), flush=True)
    table.save(out_dir)
    table.to_index_json(os.path.join(out_dir, "index.json"), item_keys)
    return paths


def write_learned_sids(table: SIDTable, vectors: np.ndarray, out_dir: str, item_keys: list[str]) -> dict:
    """``write_sids`` for SIDs a model learned (``TrainableRecommender.learned_sid_table``) by residual
    quantization of its item ``vectors [N, E]`` with the table's codebooks; returns a summary."""
    energy = residual_energy(vectors, table.codes, np.stack(table.codebooks))
    report = health.compute_health(table.codes, table.codebook_sizes, residual_energy=energy,
                                   recon_error=energy[-1] / energy[0])
    json_path, png_path = write_sids(table, report, out_dir, item_keys)
    return {"sid_table": os.path.join(out_dir, "sid_table.json"), "index_json": os.path.join(out_dir, "index.json"),
            "unique_sids": report.num_unique_sids, "collision_rate": report.collision_rate, "health": json_path,
            "health_png": png_path}


def tokenize(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset,
             features: Features | None) -> tuple[SIDTable, dict]:
    """Fits the tokenizer, writes the SID artifact and health report; returns the table and a summary."""
    from gr_jax.tokenizers import aligned

    tok = config.tokenizer
    if tok.name == "pctx":
        return tokenize_personalized(config, workdir, dataset, features)
    out_dir = os.path.join(workdir, "tokenize")
    tic = time.time()
    code_token_embeddings = None
    if tok.name == "index_json":
        declared = tok.index_json_codebook_size
        table = SIDTable.from_index_json(tok.index_json, dataset.items.keys, declared if declared > 0 else None)
        report = health.compute_health(table.codes, table.codebook_sizes)
        info = {"imported": tok.index_json, "note": "collision rates are those of the imported (final) SIDs"}
    else:
        if tok.name == "prism":
            fit = fit_prism(dataset, features, tok.prism)
        elif tok.name == "aligned":
            fit, code_token_embeddings = fit_aligned_tokenizer(features, tok)
        else:
            fit = fit_tokenizer(input_embeddings(features, tok.input), tok)
        report = health.compute_health(fit.codes, fit.codebooks.shape[1], residual_energy=fit.residual_energy,
                                       recon_error=fit.recon_error)
        table = sid_table_from_fit(fit, tok)
        info = fit.info
    table.validate(dataset.num_items)
    json_path, png_path = write_sids(table, report, out_dir, dataset.items.keys)
    if path := aligned.save_code_token_embeddings(out_dir, code_token_embeddings):  # else drops a stale one
        info = info | {"code_token_embeddings": path}
    summary = {"tokenizer": tok.name, "num_levels": table.num_levels, "codebook_sizes": list(table.codebook_sizes),
               "unique_sids_after_collision_handling": table.num_unique,
               "collision_rate_before": report.to_dict().get("collision_rate"), "health": json_path,
               "health_png": png_path, "seconds": time.time() - tic} | info
    # Collision limits apply to the SIDs the model will see, i.e. after collision handling.
    after = health.compute_health(table.codes, table.codebook_sizes).collision_rate
    summary["collision_rate_after"] = after
    if tok.health.enforce:
        limits = thresholds(tok.health)
        if tok.name == "index_json":
            # Codebook quality is the exporting tokenizer's business (and an imported last level may be a
            # de-dup digit), so only the collision limit applies to imported SIDs.
            limits = health.HealthThresholds(min_usage=None, min_perplexity_fraction=None, max_energy_ratio=None,
                                             max_collision_rate=limits.max_collision_rate)
        health.check_health(dataclasses.replace(report, collision_rate=after), limits)
    logging.info("Tokenized %d items into %d-level SIDs (%d unique).", dataset.num_items, table.num_levels,
                 table.num_unique)
    return table, summary
