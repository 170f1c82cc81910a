"""Semantic-ID tokenizers (residual k-means, RQ-VAE) and the shared SID tooling: health, collisions, tables."""
