"""Two-tower image-text model covering CLIP, MAE and MAE-CLIP with one code path.

Which parts exist is decided by switches: `has_text` (text tower + projections +
temperature, for the contrastive loss), `has_decoder` (MAE pixel decoder) and
`has_text_decoder` (optional masked-text reconstruction through the same text tower). MAE has no text
tower and no contrastive parameters; CLIP has no decoder; MAE-CLIP has both, and its masked
pass runs the SAME image encoder parameters on the visible patches only.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax import masking
from maeclip_jax.models import layers
from maeclip_jax.models.mae_decoder import MAEDecoder
from maeclip_jax.models.text import TextTransformer
from maeclip_jax.models.text_decoder import TextDecoder
from maeclip_jax.models.vit import ViT

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class ImageTextModel(nn.Module):
    """Image tower (+ optional text tower, projections, temperature, MAE decoder).

    Attributes:
      image: ViT kwargs (patch_size, width, depth, mlp_dim, num_heads, posemb, pooling).
      text: TextTransformer kwargs, or None for an image-only model (MAE).
      decoder: MAEDecoder kwargs (width, depth, mlp_dim, num_heads), or None (CLIP).
      text_decoder: TextDecoder kwargs for the optional masked-text reconstruction of MAE-CLIP
        (width, depth, mlp_dim, num_heads), or None (the default: no text reconstruction).
      embed_dim: shared embedding size of the contrastive projections.
      image_size: input resolution (square), fixes the decoder's patch grid.
    """

    image: dict
    text: Optional[dict]
    decoder: Optional[dict]
    embed_dim: int
    image_size: int
    text_decoder: Optional[dict] = None
    remat: bool = False  # or a layers.REMAT_POLICIES name
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    @property
    def has_text_decoder(self) -> bool:
        return self.text_decoder is not None

    @property
    def grid_hw(self) -> tuple:
        g = self.image_size // self.image["patch_size"]
        return (g, g)

    @property
    def num_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    def setup(self):
        self.image_encoder = ViT(**self.image, remat=self.remat, scan=self.scan, dtype=self.dtype)
        if self.has_text:
            self.text_encoder = TextTransformer(**self.text, remat=self.remat, scan=self.scan, dtype=self.dtype)
            self.image_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                                             kernel_init=nn.initializers.xavier_uniform())
            self.text_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                                            kernel_init=nn.initializers.xavier_uniform())
            self.logit_scale = self.param("logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT),
                                          (), jnp.float32)
        if self.has_decoder:
            p = self.image["patch_size"]
            self.image_decoder = MAEDecoder(grid_hw=self.grid_hw, patch_dim=p * p * 3,
                                            remat=self.remat, scan=self.scan, dtype=self.dtype,
                                            **self.decoder)
        if self.has_text_decoder:
            self.text_reconstruction_decoder = TextDecoder(
                vocab_size=self.text["vocab_size"], remat=self.remat, scan=self.scan,
                dtype=self.dtype,
                **self.text_decoder)

    # --- The interface every trainer and evaluator uses. ---

    def encode_image(self, images: jax.Array) -> dict:
        """`[B, H, W, 3]` -> dict(pooled `[B, W]`, tokens `[B, T, W]`, embedding `[B, D]`).

        `embedding` (L2-normalised projection) exists only for models with a text tower.
        """
        out = dict(self.image_encoder(images))
        if self.has_text:
            out["embedding"] = _l2_normalize(self.image_projection(out["pooled"]))
        return out

    def encode_text(self, tokens: jax.Array) -> dict:
        """`[B, L]` int -> dict(pooled `[B, W]`, tokens `[B, L, W]`, embedding `[B, D]`)."""
        if not self.has_text:
            raise ValueError("this model has no text tower (an image-only MAE)")
        out = dict(self.text_encoder(tokens))
        out["embedding"] = _l2_normalize(self.text_projection(out["pooled"]))
        return out

    def temperature_scale(self) -> jax.Array:
        """exp(t), with t capped so that the scale never exceeds 100 (CLIP)."""
        return jnp.exp(jnp.minimum(self.logit_scale, LOGIT_SCALE_MAX))

    def reconstruct_image(self, images: jax.Array, mask: masking.Mask) -> jax.Array:
        """Masked pass: encoder on visible patches only, decoder -> pixels `[B, N, p*p*3]`."""
        enc = self.image_encoder(images, ids_keep=mask.ids_keep)
        return self.image_decoder(enc["tokens"], mask.ids_restore,
                                  has_cls=self.image_encoder.has_cls)

    def reconstruct_text(self, tokens: jax.Array, text_mask: masking.TextMask) -> jax.Array:
        """Masked text pass: the SAME text tower on the visible tokens, the light text decoder
        -> logits `[B, L, vocab]`."""
        enc = self.text_encoder(tokens, ids_keep=text_mask.ids_keep, visible=text_mask.visible)
        return self.text_reconstruction_decoder(enc["tokens"], text_mask.ids_restore,
                                                text_mask.visible, text_mask.valid)

    def __call__(self, images: jax.Array, tokens: Optional[jax.Array] = None,
                 mask: Optional[masking.Mask] = None) -> dict:
        """Runs every part once; used to initialise all parameters."""
        out = {"image": self.encode_image(images)}
        if self.has_text:
            out["text"] = self.encode_text(tokens)
            out["scale"] = self.temperature_scale()
        if self.has_decoder:
            out["pred"] = self.reconstruct_image(images, mask)
        if self.has_text_decoder:
            out["text_logits"] = self.reconstruct_text(
                tokens, masking.random_text_mask(jax.random.PRNGKey(0), tokens, 0.5))
        return out
