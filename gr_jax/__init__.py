"""gr_jax: generative recommendation in JAX/Flax."""

__version__ = "0.1.0"
