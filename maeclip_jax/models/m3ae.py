"""M3AE (Geng et al. 2022): ONE joint encoder over [CLS, visible image patches, visible text
tokens], a joint decoder with a mask token per modality, pixel and token reconstruction.

Every token gets a fixed sin-cos position (2-D for patches, 1-D for text) and a learned
modality-type embedding. Padding tokens are never visible to the encoder and never a loss
target (see `masking.random_text_mask`). There is no contrastive head, hence no text
embedding: `has_text` is False and zero-shot does not apply; the image representation for
probing is the joint encoder run on the image alone (all patches, no text).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maeclip_jax import masking
from maeclip_jax.models import layers, pooling
from maeclip_jax.models.mae_decoder import fill_masked

IMAGE, TEXT = 0, 1  # rows of the modality-type embeddings


class M3AE(nn.Module):
    """Joint image-text masked autoencoder.

    Attributes:
      image: kwargs of the joint encoder (patch_size, width, depth, mlp_dim, num_heads, posemb,
        pooling): the image variant names the encoder, as in the paper's tables.
      text: dict(vocab_size, max_len).
      decoder: dict(width, depth, mlp_dim, num_heads) of the joint decoder.
      image_size: input resolution (square).
    """

    image: dict
    text: dict
    decoder: dict
    image_size: int
    remat: bool = False
    scan: bool = False   # nn.scan over the blocks (layers.Encoder)
    dtype: Any = jnp.float32

    has_text = False      # no text embedding: zero-shot / retrieval do not apply
    has_decoder = True

    @property
    def grid_hw(self) -> tuple:
        g = self.image_size // self.image["patch_size"]
        return (g, g)

    @property
    def num_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    def setup(self):
        w, p = self.image["width"], self.image["patch_size"]
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
        self.patch_embedding = nn.Conv(w, (p, p), strides=(p, p), padding="VALID",
                                       dtype=self.dtype)
        self.token_embedding = nn.Embed(self.text["vocab_size"], w,
                                        embedding_init=nn.initializers.normal(0.02))
        if self.image.get("posemb", "sincos2d") == "learn":
            self.image_pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                                        (1, self.num_patches, w), jnp.float32)
        self.cls = self.param("cls", nn.initializers.zeros, (1, 1, w), jnp.float32)
        self.type_embedding = self.param("type_embedding", nn.initializers.normal(0.02), (2, w),
                                         jnp.float32)
        self.encoder = layers.Encoder(self.image["depth"], self.image["mlp_dim"],
                                      self.image["num_heads"], remat=self.remat, scan=self.scan,
                                      dtype=self.dtype)
        if self.image.get("pooling", "gap") == "map":
            self.map_head = pooling.MAPHead(self.image["num_heads"], self.image["mlp_dim"],
                                            dtype=self.dtype)
        d = self.decoder
        self.decoder_embed = nn.Dense(d["width"], **dense)
        self.image_mask_token = self.param("image_mask_token", nn.initializers.normal(0.02),
                                           (1, 1, d["width"]), jnp.float32)
        self.text_mask_token = self.param("text_mask_token", nn.initializers.normal(0.02),
                                          (1, 1, d["width"]), jnp.float32)
        self.decoder_type_embedding = self.param("decoder_type_embedding",
                                                 nn.initializers.normal(0.02), (2, d["width"]),
                                                 jnp.float32)
        self.joint_decoder = layers.Encoder(d["depth"], d["mlp_dim"], d["num_heads"],
                                            remat=self.remat, scan=self.scan, dtype=self.dtype)
        self.pixel_head = nn.Dense(p * p * 3, dtype=jnp.float32,
                                   kernel_init=nn.initializers.xavier_uniform())
        self.text_head = nn.Dense(self.text["vocab_size"], dtype=jnp.float32,
                                  kernel_init=nn.initializers.xavier_uniform())

    # --- embeddings ---

    def _embed_image(self, images: jax.Array) -> jax.Array:
        """`[B, H, W, 3]` -> patch tokens with position and type, `[B, N, W]`."""
        x = self.patch_embedding(images)
        b, gh, gw, w = x.shape
        x = x.reshape(b, gh * gw, w)
        if self.image.get("posemb", "sincos2d") == "learn":
            pos = self.image_pos
        else:
            pos = layers.sincos_2d(gh, gw, w)[None]
        return x + (pos + self.type_embedding[IMAGE]).astype(x.dtype)

    def _embed_text(self, tokens: jax.Array) -> jax.Array:
        """`[B, L]` ids -> token embeddings with position and type, `[B, L, W]`."""
        x = self.token_embedding(tokens).astype(self.dtype)
        pos = layers.sincos_1d(self.text["max_len"], x.shape[-1])[None, :tokens.shape[1]]
        return x + (pos + self.type_embedding[TEXT]).astype(x.dtype)

    def _with_cls(self, x: jax.Array) -> jax.Array:
        cls = jnp.broadcast_to(self.cls, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        return jnp.concatenate([cls, x], axis=1)

    # --- the evaluator interface ---

    def encode_image(self, images: jax.Array) -> dict:
        """The joint encoder on the image alone: dict(pooled `[B, W]`, tokens `[B, T, W]`).

        T = N + 1 with 'cls' pooling (the class token first), else N patch tokens, as ViT.
        """
        x = self.encoder(self._with_cls(self._embed_image(images)))
        kind = self.image.get("pooling", "gap")
        patches = x[:, 1:]
        if kind == "map":
            pooled = self.map_head(patches)
        elif kind == "cls":
            pooled = x[:, 0]
        else:
            pooled = pooling.pool_tokens(kind, patches)
        return {"tokens": x if kind == "cls" else patches, "pooled": pooled}

    # --- the training pass ---

    def reconstruct(self, images: jax.Array, tokens: jax.Array, image_mask: masking.Mask,
                    text_mask: masking.TextMask) -> tuple:
        """Masked joint pass.

        Args:
          images: `[B, H, W, 3]`; tokens: `[B, L]` ids; image_mask: over the N patches;
          text_mask: from `masking.random_text_mask(tokens)`.

        Returns:
          (pixels `[B, N, p*p*3]`, text logits `[B, L, vocab]`), both in original order.
        """
        img = masking.take_tokens(self._embed_image(images), image_mask.ids_keep)
        txt = masking.take_tokens(self._embed_text(tokens), text_mask.ids_keep)
        b, k_img, k_txt = img.shape[0], img.shape[1], txt.shape[1]
        # Keys: CLS and kept patches always; a text slot only if it is a visible real token.
        keys = jnp.concatenate([jnp.ones((b, 1 + k_img), bool), text_mask.visible], axis=1)
        x = self.encoder(self._with_cls(jnp.concatenate([img, txt], axis=1)),
                         keys[:, None, None, :])

        y = self.decoder_embed(x)
        y_cls, y_img, y_txt = y[:, :1], y[:, 1:1 + k_img], y[:, 1 + k_img:]
        dw = y.shape[-1]
        y_img = fill_masked(y_img, image_mask.ids_restore, self.image_mask_token)
        y_img = y_img + (layers.sincos_2d(*self.grid_hw, dw)
                         + self.decoder_type_embedding[IMAGE]).astype(y.dtype)
        y_txt = fill_masked(y_txt, text_mask.ids_restore, self.text_mask_token, text_mask.visible)
        y_txt = y_txt + (layers.sincos_1d(self.text["max_len"], dw)[None, :tokens.shape[1]]
                         + self.decoder_type_embedding[TEXT]).astype(y.dtype)
        n = y_img.shape[1]
        keys = jnp.concatenate([jnp.ones((b, 1 + n), bool), text_mask.valid], axis=1)
        z = self.joint_decoder(jnp.concatenate([y_cls, y_img, y_txt], axis=1),
                               keys[:, None, None, :])
        return self.pixel_head(z[:, 1:1 + n]), self.text_head(z[:, 1 + n:])

    def __call__(self, images: jax.Array, tokens: Optional[jax.Array] = None,
                 mask: Optional[masking.Mask] = None) -> dict:
        """Runs every part once; used to initialise all parameters."""
        if tokens is None:
            raise ValueError("M3AE needs text tokens to initialise its text embedding")
        if mask is None:
            mask = masking.random_mask(jax.random.PRNGKey(0), images.shape[0], self.num_patches,
                                       0.75)
        text_mask = masking.random_text_mask(jax.random.PRNGKey(1), tokens, 0.5)
        pixels, logits = self.reconstruct(images, tokens, mask, text_mask)
        return {"image": self.encode_image(images), "pred": pixels, "text_logits": logits}
