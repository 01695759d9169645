"""Shared evaluation plumbing: sharded, padded batched inference, config fields, and the
evaluation datasets (built-in, TFDS, the centre crop every evaluator uses)."""
import functools
import logging
import re
from typing import Callable, Dict, Iterator, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maeclip_jax import sharding
from maeclip_jax.train_step import normalize_images


def is_unset(value) -> bool:
    """None, '' and empty tuples / lists mean "not set": the typed defaults of config.evals
    (so that every field can be overridden from the command line, which ml_collections refuses
    for fields whose default is None)."""
    return value is None or (isinstance(value, (str, tuple, list)) and len(value) == 0)


def field(cfg, key: str, default=None):
    """`cfg.key`, or `default` when the field is absent or unset (see `is_unset`)."""
    value = cfg.get(key, None)
    return default if is_unset(value) else value


def dataset_kind(cfg, name: str, allowed: Sequence[str]) -> Tuple[str, str]:
    """`config.evals.<name>.dataset` -> (kind, argument): 'builtin' -> ('builtin', ''),
    'tfds:NAME' -> ('tfds', 'NAME'), 'img2dataset:PATTERN' -> ('img2dataset', 'PATTERN').
    Raises ValueError naming the field when the kind is not among `allowed`."""
    spec = field(cfg, "dataset", "builtin")
    kind, _, arg = spec.partition(":")
    if kind not in allowed or (kind == "builtin") != (arg == ""):
        forms = {"builtin": "'builtin'", "tfds": "'tfds:NAME'",
                 "img2dataset": "'img2dataset:PATTERN'"}
        raise ValueError(f"config.evals.{name}.dataset={spec!r}: expected "
                         + " or ".join(forms[k] for k in allowed))
    return kind, arg


def resize_center_crop(image, size: int):
    """An image `[H, W, C]` (numpy or tensor; C = 1, 3 or 4) -> uint8 tensor
    `[size, size, 3]`: the shorter side resized to `size` (antialiased bilinear), then the
    centre `size` x `size` crop. The one resize of every evaluator's external images; works
    eagerly and inside tf.data."""
    import tensorflow as tf
    img = tf.convert_to_tensor(image)
    channels = img.shape[-1]
    if channels == 1:
        img = tf.image.grayscale_to_rgb(img)
    elif channels == 4:
        img = img[..., :3]
    shape = tf.cast(tf.shape(img)[:2], tf.float64)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(size, tf.cast(tf.round(shape * scale), tf.int32))
    r = tf.image.resize(img, new, antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    r = r[top:top + size, left:left + size]
    out = tf.cast(tf.clip_by_value(tf.round(r), 0, 255), tf.uint8)
    out.set_shape([size, size, 3])
    return out


def get_path(example: dict, path: str, what: str):
    """`example['a']['b']` for path 'a/b' (or a flat key holding '/'); a missing key raises
    KeyError naming `what` (the config field) and the keys there are."""
    if path in example:
        return example[path]
    node = example
    for part in path.split("/"):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(f"{what}={path!r}: not a feature of the dataset; it has "
                           f"{sorted(example.keys())}")
        node = node[part]
    return node


# ----------------------------------------------------------------------------- TFDS


def tfds_builder(name: str, dataset: str, data_dir: str):
    """The TFDS builder of `dataset` (never downloads); errors name the config field."""
    import tensorflow_datasets as tfds
    try:
        return tfds.builder(dataset, data_dir=data_dir or None)
    except Exception as e:  # noqa: BLE001 (re-raised naming the config field)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"config.evals.{name}.dataset='tfds:{dataset}': {first} "
                                f"(data_dir={data_dir or None!r})") from e


def tfds_split(builder, name: str, split_field: str, split: str, data_dir: str):
    """`builder.as_dataset(split)`, in file order (the same on every host), images decoded.
    Nothing is downloaded: a dataset not prepared in data_dir raises FileNotFoundError naming
    the config fields, the dataset and data_dir."""
    known = list(builder.info.splits)  # empty under tfds.testing.mock_data
    base = re.split(r"[\[+]", split)[0]
    if known and base not in known:
        raise ValueError(f"config.evals.{name}.{split_field}={split!r}: TFDS "
                         f"{builder.name!r} has splits {sorted(known)}")
    try:
        return builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:  # noqa: BLE001 (re-raised naming the config field)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"config.evals.{name}.dataset='tfds:{builder.name}' ({split_field}={split!r}) is "
            f"not prepared in config.evals.{name}.data_dir={data_dir or None!r}; evaluation "
            f"never downloads: prepare it with `tfds build {builder.name} --data_dir=DIR` (or "
            f"tfds.builder(...).download_and_prepare()) and set data_dir, or evaluate on the "
            f"built-in data instead: --config.evals.{name}.dataset=builtin. ({first})") from e


def default_test_split(builder) -> str:
    """'validation' where the dataset has one (imagenet2012), else 'test' (cifar10, pets)."""
    return "validation" if "validation" in list(builder.info.splits) else "test"


def tfds_class_feature(builder, name: str, label_key: str):
    """The ClassLabel feature at `label_key` (None if the label is not a ClassLabel)."""
    import tensorflow_datasets as tfds
    feats = builder.info.features
    try:
        feat = get_path(feats, label_key, f"config.evals.{name}.label_key")
    except KeyError as e:
        raise KeyError(f"{e.args[0]} (TFDS {builder.name!r})") from None
    return feat if isinstance(feat, tfds.features.ClassLabel) else None


def tfds_image_label_chunks(ds, name: str, image_key: str, label_key: str, image_size: int,
                            num_examples: int, chunk: int) -> Iterator[dict]:
    """Numpy chunks {image uint8 `[n, S, S, 3]` (resize_center_crop), label int64 `[n]`} of
    a TFDS split, at most `num_examples` (0 = all) examples, decoded in parallel, in order."""
    import tensorflow as tf
    if num_examples > 0:
        ds = ds.take(num_examples)
    spec = ds.element_spec
    get_path(spec, image_key, f"config.evals.{name}.image_key")  # fail with the keys there
    get_path(spec, label_key, f"config.evals.{name}.label_key")

    def prep(ex):
        return {"image": resize_center_crop(get_path(ex, image_key, "image_key"), image_size),
                "label": tf.cast(get_path(ex, label_key, "label_key"), tf.int64)}
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(chunk).prefetch(1).as_numpy_iterator()


def features_of_chunks(model, params, chunks: Iterator[dict], config, batch_size: int, mesh,
                       keys: Sequence[str]) -> Tuple[dict, np.ndarray]:
    """Image features `keys` (of image_features) and labels of every chunk, concatenated, so
    that only one chunk of images is in memory at a time."""
    feats: Dict[str, list] = {k: [] for k in keys}
    labels = []
    for c in chunks:
        out = image_features(model, params, c["image"], config, batch_size, mesh)
        for k in keys:
            feats[k].append(out[k])
        labels.append(c["label"])
    if not labels:
        raise ValueError("the TFDS split holds no examples")
    logging.info("computed image features of %d examples", sum(len(y) for y in labels))
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)


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
