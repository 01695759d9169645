"""tf.data -> per-process numpy batches -> global sharded jax.Arrays, with prefetch to device.

Sources are registered by name (`config.input.source`). A source returns a tf.data stream of
dicts with at least `image` (uint8 `[H, W, 3]` at the configured size) and `text` (string),
covering only this process's share of the data, starting at a given example position so that
a resumed run continues exactly where it stopped.
"""
import collections
import itertools
from typing import Callable, Dict, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from maeclip_jax.data import builtin
from maeclip_jax.data.tokenizer import Tokenizer

_SOURCES: Dict[str, Callable[..., tf.data.Dataset]] = {}


def register_source(name: str):
    def wrap(fn):
        _SOURCES[name] = fn
        return fn
    return wrap


@register_source("builtin")
def _builtin_source(input_cfg: ml_collections.ConfigDict, seed: int, start: int) -> tf.data.Dataset:
    # Example n of this process is global example n * process_count + process_index, so the
    # processes read disjoint streams and the position is one integer per process.
    return builtin.dataset(seed, "train", input_cfg.image_size,
                           start=start * jax.process_count() + jax.process_index(),
                           stride=jax.process_count())


def source_names() -> list:
    return sorted(_SOURCES)


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  start_step: int) -> tf.data.Dataset:
    """Per-process training batches: image uint8 `[b, H, W, 3]`, text int32 `[b, L]`."""
    icfg = config.input
    local_batch = config.batch_size // jax.process_count()
    name = icfg.source
    if name not in _SOURCES:
        raise ValueError(f"config.input.source={name!r} is not a known source; known: {source_names()}")
    ds = _SOURCES[name](icfg, config.seed, start=start_step * local_batch)
    ds = ds.map(lambda ex: {"image": ex["image"], "text": ex["text"]})
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(lambda ex: {"image": ex["image"], "text": tokenizer.tokenize(ex["text"])},
                num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = icfg.get("num_threads") or 0
    options.autotune.enabled = True
    return ds.with_options(options).prefetch(icfg.get("prefetch", 2))


def to_global_arrays(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_device(batches: Iterator[dict], sharding: jax.sharding.Sharding,
                       size: int = 2) -> Iterator[dict]:
    """Keeps `size` batches in flight on the devices, so host-to-device copies overlap compute."""
    queue = collections.deque()
    for batch in itertools.islice(batches, size):
        queue.append(to_global_arrays(batch, sharding))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(batches, 1):
            queue.append(to_global_arrays(batch, sharding))


def train_iterator(config: ml_collections.ConfigDict, tokenizer: Tokenizer, start_step: int,
                   sharding: jax.sharding.Sharding) -> Iterator[dict]:
    """Global training batches from `start_step` on, already on the devices."""
    ds = train_dataset(config, tokenizer, start_step)
    return prefetch_to_device(ds.as_numpy_iterator(), sharding, config.input.get("prefetch", 2))
