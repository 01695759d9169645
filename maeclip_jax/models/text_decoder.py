"""The light text decoder of MAE-CLIP's optional text reconstruction: text-tower outputs for
the visible tokens + a learned mask token elsewhere -> vocabulary logits at every position."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax.models import layers
from maeclip_jax.models.mae_decoder import fill_masked


class TextDecoder(nn.Module):
    """Bidirectional transformer over [visible tokens | mask tokens] in caption order.

    Attributes:
      vocab_size: size of the output vocabulary.
      width, depth, mlp_dim, num_heads: the decoder transformer.
    """

    vocab_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    remat: bool = False
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, ids_restore: jax.Array, visible: jax.Array,
                 valid: jax.Array) -> jax.Array:
        """Decodes.

        Args:
          tokens: text-tower outputs for the gathered slots `[B, K, W_enc]`.
          ids_restore: `[B, L]`; visible: `[B, K]` bool; valid: `[B, L]` bool (non-padding),
            all from `masking.random_text_mask`.

        Returns:
          logits `[B, L, vocab_size]` (float32).
        """
        x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     name="embed")(tokens)
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width),
                                jnp.float32)
        x = fill_masked(x, ids_restore, mask_token, visible)
        x = x + layers.sincos_1d(x.shape[1], self.width)[None].astype(x.dtype)
        x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, remat=self.remat,
                           scan=self.scan, dtype=self.dtype, name="decoder")(x, valid[:, None, None, :])
        return nn.Dense(self.vocab_size, dtype=jnp.float32,
                        kernel_init=nn.initializers.xavier_uniform(), name="pred")(x)
