"""gr_jax: generative recommendation in JAX/Flax (PRISM, Pctx, TIGER, SASRec, user towers)."""

from setuptools import find_packages, setup

setup(
    name="gr_jax",
    version="0.1.0",
    description="Generative recommendation in JAX/Flax: semantic-ID tokenizers, generative retrievers, "
                "constrained beam search, from a laptop CPU to TPU pods.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gr_jax", "gr_jax.*", "configs"]),
    install_requires=[
        "jax>=0.7.1",  # jax.set_mesh
        "flax>=0.11.2",  # reads the jax.set_mesh mesh in nn.with_logical_constraint (older flax: only the legacy mesh)
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "array-record>=0.7",
        "tensorflow-datasets>=4.9.8",
        "importlib_resources",  # TFDS needs it to locate builder code without TensorFlow
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "tokenizers>=0.15",  # MiniLM tokenizer.json
        "safetensors>=0.4",  # MiniLM weights, read without PyTorch
    ],
    extras_require={
        # scann ships x86-64 Linux wheels only; elsewhere tests/retrieval skips its ScaNN tests
        "test": ["pytest>=8", "ruff>=0.6", "scann>=1.4; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "retrieval": ["scann>=1.4"],  # ANN serving
        # TPU runtime; on any machine python -m gr_jax.aot compiles for TPU topologies with it (and
        # tests/training/test_aot.py runs). On a CPU/GPU box it makes JAX print TPU-discovery warnings.
        "tpu": ["jax[tpu]"],  # the libtpu release built for the installed jax (a newer one fails to compile)
    },
)
