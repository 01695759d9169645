"""Shared evaluation plumbing: sharded, padded batched inference and evaluation datasets."""
import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maeclip_jax import sharding
from maeclip_jax.train_step import normalize_images


def batched_apply(fn: Callable, arrays: Dict[str, np.ndarray], batch_size: int, mesh,
                  params=None) -> dict:
    """Applies a jitted `fn(batch)` (or `fn(params, batch)`) -> pytree of [b, ...] over N
    examples in global batches.

    Every process holds the same full `arrays`. The last batch is padded (by repeating example
    0) to the batch size and the padding is cut from the result, so padded rows never reach a
    metric and every process runs the same number of steps. Pass `params` as an argument (not
    closed over) and keep `fn` the same object between calls (see `cached_fn`): then repeated
    evaluations during training reuse one compilation.
    """
    n = len(next(iter(arrays.values())))
    dp = sharding.data_parallel_size(mesh)
    batch_size = max(dp, (batch_size // dp) * dp)
    in_sh, out_sh = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    if params is None:
        jitted = jax.jit(fn, in_shardings=(in_sh,), out_shardings=out_sh)
    else:
        # No in_sharding for params: they keep the layout training gave them (FSDP / tensor
        # parallel), which jit reads off the committed arrays; only the batch is pinned.
        jitted = functools.partial(jax.jit(fn, out_shardings=out_sh), params)
    outs = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in arrays.items()}
        m = len(next(iter(chunk.values())))
        if m < batch_size:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - m, 0)]) for k, v in
                     chunk.items()}
        glob = {k: jax.make_array_from_callback(v.shape, in_sh, functools.partial(
            lambda idx, a: a[idx], a=v)) for k, v in chunk.items()}
        out = jax.device_get(jitted(glob))
        outs.append(jax.tree.map(lambda x: np.asarray(x)[:m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


_FN_CACHE: dict = {}


def cached_fn(kind: str, model, config, make: Callable) -> Callable:
    """One function object per (kind, model, config), made by `make()` on first use, so that
    jax.jit finds its compilation again at the next evaluation."""
    key = (kind, id(model), id(config))
    hit = _FN_CACHE.get(key)
    if hit is None or hit[0] is not model or hit[1] is not config:  # ids can be reused
        hit = _FN_CACHE[key] = (model, config, make())
    return hit[2]


def image_features(model, params, images: np.ndarray, config: ml_collections.ConfigDict,
                   batch_size: int, mesh) -> dict:
    """uint8 images `[N, H, W, 3]` -> dict(pooled `[N, W]`, embedding `[N, D]` if any)."""
    def make():
        def fn(p, batch):
            out = model.apply({"params": p}, normalize_images(batch["image"], config),
                              method="encode_image")
            return {k: v for k, v in out.items() if k in ("pooled", "embedding")}
        return fn
    return batched_apply(cached_fn("image_features", model, config, make), {"image": images},
                         batch_size, mesh, params)


def text_embeddings(model, params, tokens: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """int32 tokens `[N, L]` -> L2-normalised embeddings `[N, D]`."""
    def make():
        def fn(p, batch):
            return model.apply({"params": p}, batch["text"], method="encode_text")["embedding"]
        return fn
    return batched_apply(cached_fn("text_embeddings", model, None, make), {"text": tokens},
                         batch_size, mesh, params)


@functools.lru_cache(maxsize=8)
def builtin_eval_split(seed: int, num_examples: int, image_size: int) -> dict:
    """The built-in evaluation split (single objects, label = colour x shape), as numpy."""
    from maeclip_jax.data import builtin
    ds = builtin.dataset(seed, "eval", image_size, stop=num_examples).batch(num_examples)
    ex = next(ds.as_numpy_iterator())
    return {"image": ex["image"], "label": ex["label"]}


# Evaluation scenes drawn like training scenes (1-3 objects, captions, masks, attributes) but
# from a different seed: the built-in generator is a pure function of (seed, split, index), so a
# seed no training run uses gives images no training run has seen.
EVAL_SEED_OFFSET = 1_000_003


@functools.lru_cache(maxsize=8)
def builtin_scenes(seed: int, num_examples: int, image_size: int, offset: int = 0) -> dict:
    """`num_examples` training-style scenes from seed `seed + EVAL_SEED_OFFSET + offset`.

    Returns numpy: image `uint8 [N, H, W, 3]`, text (captions) `[N]` bytes, masks
    `bool [N, 3, H, W]`, colour / shape / size `int32 [N, 3]` (-1 = no object), num_objects `[N]`.
    """
    from maeclip_jax.data import builtin
    ds = builtin.dataset(seed + EVAL_SEED_OFFSET + offset, "train", image_size,
                         stop=num_examples).batch(num_examples)
    return next(ds.as_numpy_iterator())


def capabilities(model, config: ml_collections.ConfigDict) -> dict:
    """What the model's interface offers, found by abstract evaluation (no compute):
    image_embedding, text_tokens, text_embedding (bools)."""
    s = config.input.image_size
    img = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    txt = jax.ShapeDtypeStruct((1, config.input.max_text_len), jnp.int32)
    rng = jax.random.PRNGKey(0)

    def keys(method, x):
        try:
            out, _ = jax.eval_shape(lambda v: model.init_with_output(rng, v, method=method), x)
            return set(out)
        except (ValueError, AttributeError, TypeError):
            return set()
    ik, tk = keys("encode_image", img), keys("encode_text", txt)
    return {"image_embedding": "embedding" in ik, "text_tokens": "tokens" in tk,
            "text_embedding": "embedding" in tk}
