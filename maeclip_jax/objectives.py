"""Training objectives by name (`config.loss.<name>` = weight): each runs its own forward pass
of the model and returns a scalar loss. The train step sums the weighted terms, so MAE-CLIP is
simply {'contrastive': w_c, 'reconstruction': w_r}: one unmasked pass, one masked pass, shared
encoder parameters, one gradient. MAE-CLIP can add 'text_reconstruction' (masked text through
the same text tower); M3AE trains the single joint objective 'm3ae'.
"""
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import ml_collections

from maeclip_jax import losses, masking, sharding

# fn(model, variables, batch, rng, config) -> (loss, metrics)
Objective = Callable[..., tuple]
_OBJECTIVES: Dict[str, Objective] = {}


def register(name: str):
    def wrap(fn):
        _OBJECTIVES[name] = fn
        return fn
    return wrap


def get(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise ValueError(f"config.loss.{name}: unknown objective; known: {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name]


def names() -> list:
    return sorted(_OBJECTIVES)


@register("contrastive")
def contrastive(model, variables, batch: dict, rng: jax.Array,
                config: ml_collections.ConfigDict) -> tuple:
    """Unmasked pass of both towers -> symmetric InfoNCE over the global batch.

    With a mesh set while tracing (the train step sets it) and config.loss.contrastive_impl
    'local', every device scores only its own rows (losses.contrastive_loss_sharded)."""
    del rng
    img = model.apply(variables, batch["image"], method="encode_image")
    txt = model.apply(variables, batch["text"], method="encode_text")
    scale = model.apply(variables, method="temperature_scale")
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else tuple(a for a in mesh.axis_names if a in sharding.BATCH_AXES)
    if config.loss.get("contrastive_impl", "local") == "local" and axes:
        loss, metrics = losses.contrastive_loss_sharded(img["embedding"], txt["embedding"],
                                                        scale, mesh, axes)
    else:
        loss, metrics = losses.contrastive_loss(img["embedding"], txt["embedding"], scale)
    metrics["temperature_scale"] = scale
    return loss, metrics


@register("reconstruction")
def reconstruction(model, variables, batch: dict, rng: jax.Array,
                   config: ml_collections.ConfigDict) -> tuple:
    """Masked pass: the image encoder on visible patches, the decoder, MSE on masked patches."""
    images = batch["image"]
    mask = masking.random_mask(rng, images.shape[0], model.num_patches, config.masking.ratio)
    pred = model.apply(variables, images, mask, method="reconstruct_image")
    target = losses.reconstruction_targets(images, model.image["patch_size"],
                                           config.loss.get("norm_pix", True))
    return losses.reconstruction_loss(pred, target, mask.mask), {}


@register("text_reconstruction")
def text_reconstruction(model, variables, batch: dict, rng: jax.Array,
                        config: ml_collections.ConfigDict) -> tuple:
    """Masked text pass (MAE-CLIP, optional): the SAME text tower on the visible tokens, a light
    text decoder, cross-entropy on masked non-padding tokens (`config.masking.text_ratio`)."""
    text_mask = masking.random_text_mask(rng, batch["text"], config.masking.text_ratio)
    logits = model.apply(variables, batch["text"], text_mask, method="reconstruct_text")
    loss, acc = losses.masked_token_cross_entropy(logits, batch["text"], text_mask.mask)
    return loss, {"text_reconstruction/top1": acc}


@register("m3ae")
def m3ae(model, variables, batch: dict, rng: jax.Array,
         config: ml_collections.ConfigDict) -> tuple:
    """M3AE's joint masked pass: image MSE on masked patches + `config.loss.m3ae_text_weight`
    x cross-entropy on masked non-padding tokens (ratios `masking.ratio` / `masking.text_ratio`)."""
    images, text = batch["image"], batch["text"]
    rng_image, rng_text = jax.random.split(rng)
    image_mask = masking.random_mask(rng_image, images.shape[0], model.num_patches,
                                     config.masking.ratio)
    text_mask = masking.random_text_mask(rng_text, text, config.masking.text_ratio)
    pixels, logits = model.apply(variables, images, text, image_mask, text_mask,
                                 method="reconstruct")
    target = losses.reconstruction_targets(images, model.image["patch_size"],
                                           config.loss.get("norm_pix", True))
    image_loss = losses.reconstruction_loss(pixels, target, image_mask.mask)
    text_loss, acc = losses.masked_token_cross_entropy(logits, text, text_mask.mask)
    w_text = config.loss.get("m3ae_text_weight", 0.5)
    return image_loss + w_text * text_loss, {"m3ae/image_mse": image_loss,
                                            "m3ae/text_ce": text_loss, "m3ae/text_top1": acc}
