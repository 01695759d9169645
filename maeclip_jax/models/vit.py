"""Vision transformer image tower, able to run on all patches or on the visible subset (MAE)."""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax import masking
from maeclip_jax.models import layers, pooling


class ViT(nn.Module):
    """ViT encoder.

    Position embeddings are added to patch tokens BEFORE masking (so a kept token knows where it
    came from) and the class token is prepended AFTER masking (as MAE and FLIP do).

    Attributes:
      patch_size, width, depth, mlp_dim, num_heads: the architecture.
      posemb: 'learn' or 'sincos2d'.
      pooling: one of pooling.IMAGE_POOLINGS. A class token exists iff pooling == 'cls'.
    """

    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    posemb: str = "sincos2d"
    pooling: str = "gap"
    remat: bool = False  # or a layers.REMAT_POLICIES name
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    @property
    def has_cls(self) -> bool:
        return self.pooling == "cls"

    @nn.compact
    def __call__(self, images: jax.Array, ids_keep: Optional[jax.Array] = None) -> dict:
        """Encodes images.

        Args:
          images: `[B, H, W, 3]` float, already normalised.
          ids_keep: optional `[B, K]` int indices of the patches to keep (MAE masking).

        Returns:
          dict with `tokens` `[B, T, width]` (T = K or N, plus 1 with a class token; final-normed)
          and `pooled` `[B, width]`.
        """
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="embedding")(images)
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, self.width)
        if self.posemb == "learn":
            pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                             (1, gh * gw, self.width), jnp.float32)
        elif self.posemb == "sincos2d":
            pos = layers.sincos_2d(gh, gw, self.width)[None]
        else:
            raise ValueError(f"Unknown posemb {self.posemb!r}")
        x = x + pos.astype(x.dtype)
        if ids_keep is not None:
            x = masking.take_tokens(x, ids_keep)
        if self.has_cls:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x], 1)
        x = layers.Encoder(self.depth, self.mlp_dim, self.num_heads, remat=self.remat, scan=self.scan,
                           dtype=self.dtype, name="encoder")(x)
        if self.pooling == "map":
            pooled = pooling.MAPHead(self.num_heads, self.mlp_dim, dtype=self.dtype,
                                     name="map_head")(x)
        else:
            pooled = pooling.pool_tokens(self.pooling, x)
        return {"tokens": x, "pooled": pooled}
