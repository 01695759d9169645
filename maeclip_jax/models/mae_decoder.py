"""The light MAE decoder: encoder tokens + learned mask tokens -> pixels of every patch."""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax import masking
from maeclip_jax.models import layers


def fill_masked(kept: jax.Array, ids_restore: jax.Array, mask_token: jax.Array,
                visible: Optional[jax.Array] = None) -> jax.Array:
    """Puts encoder outputs back in token order with a mask token everywhere else.

    Args:
      kept: `[B, K, W]` outputs for the gathered tokens (`ids_keep` order).
      ids_restore: `[B, N]` inverse shuffle from `masking.random_mask` / `random_text_mask`.
      mask_token: `[1, 1, W]`.
      visible: optional `[B, K]` bool; gathered slots that were not visible also get the mask
        token (text masks gather a fixed K but show fewer tokens for short captions).

    Returns:
      `[B, N, W]` in the original token order.
    """
    b, k, w = kept.shape
    n = ids_restore.shape[1]
    token = mask_token.astype(kept.dtype)
    if visible is not None:
        kept = jnp.where(visible[..., None], kept, token)
    x = jnp.concatenate([kept, jnp.broadcast_to(token, (b, n - k, w))], axis=1)
    return masking.take_tokens(x, ids_restore)


class MAEDecoder(nn.Module):
    """Predicts every patch's pixels from the visible tokens.

    Attributes:
      grid_hw: (rows, cols) of the patch grid; N = rows * cols.
      patch_dim: pixels per patch, p*p*3.
      width, depth, mlp_dim, num_heads: the decoder transformer.
    """

    grid_hw: tuple
    patch_dim: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    remat: bool = False  # or a layers.REMAT_POLICIES name
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, ids_restore: jax.Array, has_cls: bool) -> jax.Array:
        """Decodes.

        Args:
          tokens: encoder output `[B, K (+1 with a class token), W_enc]`.
          ids_restore: `[B, N]` from `masking.random_mask`.
          has_cls: whether tokens[:, 0] is a class token.

        Returns:
          predicted pixels `[B, N, patch_dim]` in patch order.
        """
        x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     name="embed")(tokens)
        if has_cls:
            cls, x = x[:, :1], x[:, 1:]
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width),
                                jnp.float32)
        x = fill_masked(x, ids_restore, mask_token)
        x = x + layers.sincos_2d(*self.grid_hw, self.width)[None].astype(x.dtype)
        if has_cls:
            x = jnp.concatenate([cls, x], axis=1)
        x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, remat=self.remat, scan=self.scan,
                           dtype=self.dtype, name="decoder")(x)
        if has_cls:
            x = x[:, 1:]
        return nn.Dense(self.patch_dim, dtype=jnp.float32,
                        kernel_init=nn.initializers.xavier_uniform(), name="pred")(x)
