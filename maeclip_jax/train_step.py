"""The train state, its initialisation, and the ONE jitted train step."""
from typing import Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from maeclip_jax import masking, objectives

TrainState = dict  # {"step": int32 [], "params": pytree, "opt_state": pytree}


def normalize_images(images: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """uint8 `[B, H, W, 3]` -> float32 `(x / 255 - mean) / std` (done on device: the host
    sends 4x fewer bytes)."""
    mean = jnp.asarray(config.input.get("mean", (0.5, 0.5, 0.5)), jnp.float32)
    std = jnp.asarray(config.input.get("std", (0.5, 0.5, 0.5)), jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def flip_images(images: jax.Array, flip: jax.Array) -> jax.Array:
    """Horizontal flip of the examples where `flip` `[B]` is True, `[B, H, W, C]` (on the
    device: the input pipeline only decides, see data/pipeline.flip_bits)."""
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def input_spec(config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes of one global training batch (image uint8, text ids, flip bool)."""
    b, s = config.batch_size, config.input.image_size
    return {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8),
            "text": jax.ShapeDtypeStruct((b, config.input.max_text_len), jnp.int32),
            "flip": jax.ShapeDtypeStruct((b,), jnp.bool_)}


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Initialises parameters (every part of the model) and optimizer state."""
    spec = input_spec(config)
    b = 2  # parameters do not depend on the batch size
    images = jnp.zeros((b,) + spec["image"].shape[1:], jnp.float32)
    tokens = jnp.ones((b,) + spec["text"].shape[1:], jnp.int32)
    mask = None
    if getattr(model, "has_decoder", False):
        mask = masking.random_mask(jax.random.PRNGKey(0), b, model.num_patches, config.masking.ratio)
    params = model.init(rng, images, tokens, mask)["params"]  # image-only models ignore tokens
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def loss_weights(config: ml_collections.ConfigDict) -> dict:
    """The objectives with a non-zero weight, in a fixed order."""
    return {k: float(v) for k, v in sorted(config.loss.items())
            if k in objectives.names() and float(v) > 0}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict
                    ) -> Callable[[TrainState, dict], Tuple[TrainState, dict]]:
    """Builds `step(state, batch) -> (state, metrics)`; jit it with the state donated."""
    weights = loss_weights(config)
    base_rng = jax.random.PRNGKey(config.seed)

    def step(state: TrainState, batch: dict) -> Tuple[TrainState, dict]:
        # Randomness (masks) is a function of (seed, step): resumed runs draw the same masks.
        rng = jax.random.fold_in(base_rng, state["step"])
        images = batch["image"]
        if "flip" in batch:  # the pipeline's batches always say; hand-made ones may not
            images = flip_images(images, batch["flip"])
        batch = dict(batch, image=normalize_images(images, config))

        def loss_fn(params):
            variables = {"params": params}
            total, metrics = 0.0, {}
            for i, (name, w) in enumerate(weights.items()):
                loss, m = objectives.get(name)(model, variables, batch,
                                               jax.random.fold_in(rng, i), config)
                total = total + w * loss
                metrics[f"loss/{name}"] = loss
                metrics.update(m)
            return total, metrics

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics.update({"loss": loss, "grad_norm": optax.global_norm(grads),
                        "learning_rate": schedule(state["step"])})
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return step
