"""maeclip_jax: MAE, M3AE, CLIP and MAE-CLIP (Weers et al., CVPR 2023) in JAX/Flax."""

__version__ = "0.1.0"
