"""Training objectives by name (`config.loss.<name>` = weight): each runs its own forward pass
of the model and returns a scalar loss. The train step sums the weighted terms, so MAE-CLIP is
simply {'contrastive': w_c, 'reconstruction': w_r}: one unmasked pass, one masked pass, shared
encoder parameters, one gradient.
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
