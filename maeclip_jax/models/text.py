"""Text tower: token + learned position embeddings, causal pre-LN transformer, pooling."""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax import masking
from maeclip_jax.models import layers, pooling

PAD_ID = 0  # Every tokenizer of this package reserves id 0 for padding.


class TextTransformer(nn.Module):
    """CLIP-style text encoder.

    With causal attention and 'eot' pooling, the end-of-text token (the last non-padding token)
    is the only one that has seen the whole caption, so it is the one pooled.
    """

    vocab_size: int
    max_len: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    pooling: str = "eot"
    causal: bool = True
    remat: bool = False  # or a layers.REMAT_POLICIES name
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, ids_keep: Optional[jax.Array] = None,
                 visible: Optional[jax.Array] = None) -> dict:
        """Encodes token ids, all of them or (masked pass) only a gathered visible subset.

        Args:
          tokens: `[B, L]` int32, padded with PAD_ID after the end-of-text token.
          ids_keep, visible: optional `[B, K]` from `masking.random_text_mask`: encode only the
            gathered positions, attending only to visible ones. Positions are embedded before
            the gather, and causality follows the original positions, so the same parameters
            serve both passes.

        Returns:
          dict with `tokens` `[B, L or K, width]`, `valid` `[B, L or K]` bool, and (unmasked
          pass only) `pooled` `[B, width]`.
        """
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds the tower's max_len {self.max_len}")
        valid = tokens != PAD_ID
        x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name="token_embedding")(tokens).astype(self.dtype)
        pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                         (1, self.max_len, self.width), jnp.float32)
        x = x + pos[:, :length].astype(self.dtype)
        if ids_keep is not None:
            x = masking.take_tokens(x, ids_keep)
            mask = visible[:, None, None, :]
            if self.causal:  # query at position i sees keys at positions <= i
                mask = jnp.logical_and(mask, ids_keep[:, None, :, None] >= ids_keep[:, None, None, :])
            # The same `encoder` (same layout, same parameters) as the unmasked pass below.
            x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, remat=self.remat,
                               scan=self.scan, dtype=self.dtype, name="encoder")(x, mask)
            return {"tokens": x, "valid": visible}
        mask = valid[:, None, None, :]  # [B, 1, q, k]: padding keys are never attended to.
        if self.causal:
            mask = jnp.logical_and(mask, nn.make_causal_mask(tokens, dtype=bool))
        x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, remat=self.remat, scan=self.scan,
                           dtype=self.dtype, name="encoder")(x, mask)
        if self.pooling == "map":
            pooled = pooling.MAPHead(self.num_heads, self.mlp_dim, dtype=self.dtype,
                                     name="map_head")(x, valid)
        else:
            eot = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)
            pooled = pooling.pool_tokens(self.pooling, x, valid=valid, eot_index=eot)
        return {"tokens": x, "pooled": pooled, "valid": valid}
