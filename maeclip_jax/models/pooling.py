"""Pooling of a tower's output tokens into one vector (the paper's pooling ablation).

`cls`: the class token (the tower must have prepended one); `gap`: mean over tokens;
`max`: elementwise max over tokens; `map`: multi-head attention pooling with a learned query;
`eot`: the end-of-text token of each sequence (CLIP's text tower).
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGE_POOLINGS = ("cls", "gap", "max", "map")
TEXT_POOLINGS = ("eot", "gap", "max", "map")


class MAPHead(nn.Module):
    """Multi-head attention pooling: one learned query attends over the tokens, then an MLP."""

    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
        from maeclip_jax.models.layers import MlpBlock  # local: avoids an import cycle
        batch, _, width = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, width), jnp.float32)
        probe = jnp.broadcast_to(probe, (batch, 1, width)).astype(x.dtype)
        mask = None if valid is None else valid[:, None, None, :]
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            kernel_init=nn.initializers.xavier_uniform())(
                                                probe, x, mask=mask)
        y = y + MlpBlock(self.mlp_dim, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(y))
        return y[:, 0]


def pool_tokens(kind: str, x: jax.Array, valid: Optional[jax.Array] = None,
                eot_index: Optional[jax.Array] = None) -> jax.Array:
    """Parameter-free pooling, `[B, T, W] -> [B, W]`.

    Args:
      kind: 'cls' (token 0), 'gap', 'max' or 'eot'.
      x: tokens `[B, T, W]`.
      valid: optional `[B, T]` bool; invalid (padding) tokens never contribute.
      eot_index: `[B]` int, position of the end-of-text token (for 'eot').
    """
    if kind == "cls":
        return x[:, 0]
    if kind == "eot":
        return jnp.take_along_axis(x, eot_index[:, None, None], axis=1)[:, 0]
    if kind == "gap":
        if valid is None:
            return jnp.mean(x, axis=1)
        w = valid[..., None].astype(x.dtype)
        return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    if kind == "max":
        if valid is not None:
            x = jnp.where(valid[..., None], x, jnp.finfo(x.dtype).min)
        return jnp.max(x, axis=1)
    raise ValueError(f"Unknown pooling {kind!r}")
