"""tf.data -> per-process numpy batches -> global sharded jax.Arrays, with prefetch to device.

Sources are registered by name (`config.input.source`): `builtin` (the synthetic dataset, no
files), `img2dataset` (webdataset .tar or TFRecord shards), `tfds` (a TFDS dataset by name) and
`mixture` (a weighted mixture of any of these). A source returns a tf.data stream of dicts with
`image` (uint8 `[H, W, 3]` at the configured size), `text` (string) and `index` (int64: the
position of the example's raw record in the source's stream), covering only this process's
share of the data.

File sources share one path (`records_to_examples`): raw records -> seeded shuffle ->
enumerate -> ONE parallel map (parse, caption check, decode + random-resized-crop + flip,
stateless, seeded by the example index) -> ignore_errors, which drops a record that failed in
the map (a corrupt JPEG, a record without image, an empty / non-UTF-8 caption). Each dropped
record leaves a gap in the indices; the host counts the gaps of every batch (`count_skipped`,
per source of a mixture), so the count costs no sequential tf.data stage (a `scan` over the
examples cost ~14% of throughput). Every other per-example tf.data function (a filter, a
separate parse map, a per-shard enumerate + filter) cost ~5-10% of throughput each on 2 cores;
see benchmarks/input_pipeline.py.

Batches are pulled from tf.data by a background thread (`HostBatches`) a few steps ahead, with
a deadline on the first (config.input.first_batch_timeout_s) and on every later one
(config.input.batch_timeout_s): a stalled read fails with a DataError instead of a hang.

Exact resume: the built-in source restarts by example index (start_step, from the checkpoint's
step). File sources (and mixtures) checkpoint the tf.data iterator itself (tf.train.Checkpoint,
per process, in WORKDIR/data_state/process_P/step_S) right after the batch of each checkpoint
step is pulled, so a run resumed at step S continues with batch S + 1 although the background
thread and the device prefetch had pulled further ahead. The saved state includes the shuffle
buffer of raw records.
"""
import collections
import itertools
import json
import logging
import os
import queue
import threading
import time
import weakref
from typing import Callable, Dict, Iterator, List, Optional

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from maeclip_jax.data import builtin, images, shards
from maeclip_jax.data.shards import DataError
from maeclip_jax.data.tokenizer import Tokenizer

_SOURCES: Dict[str, Callable[..., tf.data.Dataset]] = {}
_DESCRIBE: Dict[str, Callable[[ml_collections.ConfigDict], str]] = {}


def register_source(name: str, describe: Optional[Callable] = None):
    """Registers `fn(input_cfg, seed, start) -> tf.data.Dataset` under `name`; `describe(cfg)`
    (optional) says what the source's data holds, for the no-example-arrived error."""
    def wrap(fn):
        _SOURCES[name] = fn
        if describe is not None:
            _DESCRIBE[name] = describe
        return fn
    return wrap


def source_names() -> list:
    return sorted(_SOURCES)


def _process_seed(seed: int) -> int:
    return seed * 1_000_003 + jax.process_index()


@register_source("builtin")
def _builtin_source(input_cfg: ml_collections.ConfigDict, seed: int, start: int) -> tf.data.Dataset:
    # Example n of this process is global example n * process_count + process_index, so the
    # processes read disjoint streams and the position is one integer per process.
    ds = builtin.dataset(seed, "train", input_cfg.image_size,
                         start=start * jax.process_count() + jax.process_index(),
                         stride=jax.process_count())
    return ds.enumerate().map(lambda i, ex: {"image": ex["image"], "text": ex["text"],
                                             "index": i})


# ----------------------------------------------------------------------------- file sources


def valid_text(text: tf.Tensor) -> tf.Tensor:
    """True for a caption that is valid UTF-8 and not blank. (Training reaches the same verdict
    in fewer ops inside its per-example map: see records_to_examples.)"""
    utf8 = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                                 replacement_char=0xFFFD), text)
    return tf.logical_and(utf8, tf.strings.length(tf.strings.strip(text)) > 0)


def records_to_examples(records: tf.data.Dataset, input_cfg: ml_collections.ConfigDict,
                        seed: int, parse: Optional[Callable] = None) -> tf.data.Dataset:
    """Raw records -> {image uint8 [S, S, 3], text, index} (see module doc). A record is
    {jpg, txt[, ok]}, or whatever `parse` (run inside the per-example map) turns into one; it
    is dropped if ok is False, its caption is blank or not UTF-8 (see valid_text), or its
    image does not decode."""
    size = input_cfg.image_size
    scale = tuple(input_cfg.get("crop_scale", (0.2, 1.0)))
    ratio = tuple(input_cfg.get("crop_ratio", (3 / 4, 4 / 3)))
    buffer = input_cfg.get("shuffle_buffer", 10_000)
    if buffer > 1:
        records = records.shuffle(buffer, seed=seed + 1)
    ds = records.enumerate()

    # ONE parallel map does all per-example work, and no other per-example function runs
    # after it: each tf.data function call per element (a separate parse map, a filter) costs
    # about 10% of the decode of a 256 px JPEG, and a stage between the map and the batch adds
    # a thread hand-off per element. A record to drop fails inside the map (a corrupt JPEG
    # fails to decode; a broken record or a bad caption fails the assertion, before any
    # decoding) and ignore_errors drops it: either way it leaves a gap in the enumeration.
    def decode(i, r):
        if parse is not None:
            r = parse(r)
        # valid_text in fewer ops: strict transcoding fails on non-UTF-8 (the same ICU
        # decoder as valid_text's replace-and-compare) and returns the caption unchanged.
        text = tf.strings.unicode_transcode(r["txt"], "UTF-8", "UTF-8", errors="strict")
        keep = tf.strings.length(tf.strings.strip(text)) > 0
        if "ok" in r:  # tar: a sample missing a member, an empty or truncated shard
            keep = tf.logical_and(keep, r["ok"])
        # (An empty or missing image fails to decode.)
        with tf.control_dependencies([tf.debugging.Assert(keep, ["broken record"])]):
            jpg = tf.identity(r["jpg"])
        img = images.decode_crop_resize(
            jpg, size, tf.stack([tf.constant(seed, tf.int64), i]), scale, ratio)
        return {"image": img, "text": text, "index": i}

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors()  # broken records: dropped here, counted by the host


def flip_bits(seed: int, index: np.ndarray) -> np.ndarray:
    """Each example's horizontal flip, a coin toss that is a pure function of (seed, its
    raw-record index): splitmix64 of the two, its top bit. `bool [b]`.

    The flip itself runs on the device, in the train step (train_step.augment): reversing a
    224 px image in tf.data cost ~7% of the host pipeline's throughput, and a resumed stream
    still flips exactly the same examples."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, np.uint64) + np.uint64(seed & (2 ** 64 - 1)) * np.uint64(
            0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(63)).astype(bool)


def flip_seeds(config: ml_collections.ConfigDict) -> Dict[int, Optional[int]]:
    """{source id (mixture part, 0 without a mixture): seed of its flips, or None where
    examples are never flipped (config.input.flip False; the built-in scenes, whose captions
    say left and right)}."""
    icfg = config.input
    parts = ([(sub, k) for k, (_, sub, _) in enumerate(_mixture_parts(icfg))]
             if icfg.source == "mixture" else [(icfg, 0)])
    return {k: (None if sub.source == "builtin" or not sub.get("flip", True) else
                _process_seed(config.seed) * 7 + k) for sub, k in parts}


def count_skipped(index: np.ndarray, source: np.ndarray, last: Dict[int, int]) -> int:
    """Broken examples dropped before and within one batch: the gaps in each source's indices.

    Args:
      index: int64 `[b]`, each example's raw-record position in its source's stream (in stream
        order within a source); source: int `[b]`, the mixture part it came from (0 without a
        mixture); last: {source: last index seen}, updated in place (-1 before any example).

    Returns:
      the number of raw records that never arrived as examples since the previous batch.
    """
    gaps = 0
    for s in np.unique(source):
        idx = index[source == s].astype(np.int64)
        prev = last.get(int(s), -1)
        gaps += int(idx[-1] - prev - len(idx))  # records in (prev, idx[-1]] minus arrivals
        last[int(s)] = int(idx[-1])
    return gaps


def _process_files(files: List[str], what: str) -> List[str]:
    """This process's disjoint share of `files` (every process_count-th, from its index)."""
    n, p = jax.process_count(), jax.process_index()
    if len(files) < n:
        raise DataError(f"{what}: {len(files)} files for {n} processes; every process needs at "
                        "least one file (split the data into more shards)")
    return files[p::n]


def _img2dataset_files(input_cfg: ml_collections.ConfigDict):
    files = shards.list_files(input_cfg.data)
    fmts = {shards.shard_format(f, input_cfg.get("format", "auto")) for f in files}
    if len(fmts) > 1:
        raise DataError(f"config.input.data={input_cfg.data!r} mixes shard formats {sorted(fmts)}; "
                        "use one source per format (config.input.source='mixture')")
    return files, fmts.pop()


def _describe_img2dataset(input_cfg: ml_collections.ConfigDict) -> str:
    files, _ = _img2dataset_files(input_cfg)
    return shards.describe_shard(_process_files(files, "config.input.data")[0])


@register_source("img2dataset", describe=_describe_img2dataset)
def _img2dataset_source(input_cfg: ml_collections.ConfigDict, seed: int,
                        start: int) -> tf.data.Dataset:
    """img2dataset shards (.tar or .tfrecord, by extension or config.input.format). Position:
    the tf.data iterator checkpoint (start is unused)."""
    del start
    files, fmt = _img2dataset_files(input_cfg)
    files = _process_files(files, f"config.input.data={input_cfg.data!r}")
    pseed = _process_seed(seed)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_cfg.get("shuffle_files", True):
        ds = ds.shuffle(len(files), seed=pseed, reshuffle_each_iteration=True)
    ds = ds.repeat()
    ds = ds.interleave(shards.READERS[fmt], cycle_length=min(len(files), input_cfg.get("cycle_length", 8)),
                       block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records_to_examples(ds, input_cfg, pseed, parse=shards.TRAIN_PARSERS[fmt])


def _tfds_fields(input_cfg):
    return (input_cfg.get("image_key", "image"), input_cfg.get("text_key", "text"),
            input_cfg.get("split", "train"))


def _get_path(ex: dict, path: str):
    if path in ex:  # a flat key that holds a '/' (e.g. 'image/filename')
        return ex[path]
    for part in path.split("/"):
        if part not in ex:
            raise DataError(f"config.input.text_key / image_key: {path!r} not in the TFDS "
                            f"example; it holds {sorted(ex)}")
        ex = ex[part]
    return ex


def _describe_tfds(input_cfg: ml_collections.ConfigDict) -> str:
    import tensorflow_datasets as tfds
    builder = tfds.builder(input_cfg.data, data_dir=input_cfg.get("data_dir") or None)
    return f"TFDS {input_cfg.data!r} features: {builder.info.features}"


@register_source("tfds", describe=_describe_tfds)
def _tfds_source(input_cfg: ml_collections.ConfigDict, seed: int, start: int) -> tf.data.Dataset:
    """A TFDS dataset by name (config.input.data), split, data_dir, image_key and text_key
    ('/' for nested features; for a sequence of captions the first is used)."""
    del start
    import tensorflow_datasets as tfds
    image_key, text_key, split = _tfds_fields(input_cfg)
    builder = tfds.builder(input_cfg.data, data_dir=input_cfg.get("data_dir") or None)
    pseed = _process_seed(seed)
    read_config = tfds.ReadConfig(
        shuffle_seed=pseed, input_context=tf.distribute.InputContext(
            num_input_pipelines=jax.process_count(), input_pipeline_id=jax.process_index()))
    decoders = {}
    node = decoders
    *parents, leaf = image_key.split("/")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = tfds.decode.SkipDecoding()  # keep the encoded bytes: decode + crop in one op
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders=decoders).repeat()

    def to_record(ex):
        txt = _get_path(ex, text_key)
        if txt.shape.rank:  # a sequence of captions: the first (empty if none)
            txt = tf.strings.reduce_join(txt[:1])
        return {"jpg": _get_path(ex, image_key), "txt": txt, "key": tf.constant(""),
                "ok": tf.constant(True)}
    return records_to_examples(ds.map(to_record), input_cfg, pseed)


def _mixture_parts(input_cfg: ml_collections.ConfigDict):
    """(sub-config, weight) for each entry of config.input.mixture, a dict name -> dict with
    `source`, `weight` and any config.input field to override (data, split, keys, ...)."""
    mix = input_cfg.get("mixture")
    if not mix:
        raise DataError("config.input.source='mixture' needs config.input.mixture: "
                        "{name: {source, data, weight, ...}}")
    parts = []
    for name in sorted(mix):
        part = dict(mix[name])
        weight = float(part.pop("weight", 1.0))
        sub = ml_collections.ConfigDict(input_cfg.to_dict())
        del sub["mixture"]
        for k, v in part.items():
            sub[k] = v
        if sub.source in ("mixture",) or sub.source not in _SOURCES:
            raise DataError(f"config.input.mixture.{name}.source={sub.source!r}; choose one of "
                            f"{[s for s in source_names() if s != 'mixture']}")
        if weight <= 0:
            raise DataError(f"config.input.mixture.{name}.weight={weight} must be > 0")
        parts.append((name, sub, weight))
    return parts


def _describe_mixture(input_cfg: ml_collections.ConfigDict) -> str:
    out = []
    for name, sub, _ in _mixture_parts(input_cfg):
        d = _DESCRIBE.get(sub.source)
        out.append(f"[{name}] " + (d(sub) if d else sub.source))
    return "; ".join(out)


@register_source("mixture", describe=_describe_mixture)
def _mixture_source(input_cfg: ml_collections.ConfigDict, seed: int, start: int) -> tf.data.Dataset:
    """Samples each example from one of config.input.mixture's sources with probability
    proportional to its weight (seeded)."""
    parts = _mixture_parts(input_cfg)
    datasets = [_SOURCES[sub.source](sub, seed + 7919 * k, start)
                for k, (_, sub, _) in enumerate(parts)]
    # Each part's examples carry its number, so that the host counts each part's index gaps.
    datasets = [ds.map(lambda ex, k=k: dict(ex, source=tf.constant(k, tf.int32)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                for k, ds in enumerate(datasets)]
    weights = np.array([w for _, _, w in parts], np.float64)
    return tf.data.Dataset.sample_from_datasets(datasets, list(weights / weights.sum()),
                                                seed=_process_seed(seed) + 3)


def check_data(input_cfg: ml_collections.ConfigDict) -> None:
    """Start-up checks of the data files (before anything is compiled): every img2dataset
    pattern must match files of one known format; raises DataError naming the pattern."""
    if input_cfg.source == "img2dataset":
        _img2dataset_files(input_cfg)
    elif input_cfg.source == "mixture":
        for _, sub, _ in _mixture_parts(input_cfg):
            check_data(sub)


def uses_iterator_checkpoint(input_cfg: ml_collections.ConfigDict) -> bool:
    """Whether the data position lives in a tf.data iterator checkpoint (else: start index)."""
    return input_cfg.source != "builtin"


# ----------------------------------------------------------------------------- batches


def train_dataset(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  start_step: int) -> tf.data.Dataset:
    """Per-process training batches: image uint8 `[b, H, W, 3]`, text int32 `[b, L]`, index
    int64 `[b]` and source int32 `[b]` (for `count_skipped`)."""
    icfg = config.input
    local_batch = config.batch_size // jax.process_count()
    name = icfg.source
    if name not in _SOURCES:
        raise ValueError(f"config.input.source={name!r} is not a known source; known: {source_names()}")
    ds = _SOURCES[name](icfg, config.seed, start=start_step * local_batch)
    ds = ds.batch(local_batch, drop_remainder=True)

    def finish(ex):  # per batch, not per example
        source = ex["source"] if "source" in ex else tf.zeros_like(ex["index"], tf.int32)
        return {"image": ex["image"], "text": tokenizer.tokenize(ex["text"]),
                "index": ex["index"], "source": source}
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = icfg.get("num_threads") or 0
    options.autotune.enabled = True
    options.experimental_optimization.map_fusion = True
    return ds.with_options(options).prefetch(icfg.get("prefetch", 2))


def to_global_arrays(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_device(batches: Iterator[dict], sharding: jax.sharding.Sharding,
                       size: int = 2) -> Iterator[dict]:
    """Keeps `size` batches in flight on the devices, so host-to-device copies overlap compute."""
    queue_ = collections.deque()
    for batch in itertools.islice(batches, size):
        queue_.append(to_global_arrays(batch, sharding))
    while queue_:
        yield queue_.popleft()
        for batch in itertools.islice(batches, 1):
            queue_.append(to_global_arrays(batch, sharding))


def data_state_path(state_dir: str, step: int) -> str:
    return os.path.join(state_dir, f"process_{jax.process_index()}", f"step_{step}")


def source_summary(input_cfg: ml_collections.ConfigDict) -> str:
    """What this process reads, for error messages, without reading any data (a stalled read
    must not stall the error too): the source, its data and a few of this process's shards."""
    name = input_cfg.source
    if name == "img2dataset":
        try:
            files, _ = _img2dataset_files(input_cfg)
            mine = _process_files(files, "config.input.data")
        except DataError as e:
            return str(e)
        more = f" and {len(mine) - 3} more" if len(mine) > 3 else ""
        return (f"config.input.source='img2dataset', data={input_cfg.data!r}: this process "
                f"reads {len(mine)} shards, e.g. {', '.join(mine[:3])}{more}")
    if name == "mixture":
        return "; ".join(f"[{part}] " + source_summary(sub) for part, sub, _ in
                         _mixture_parts(input_cfg))
    if name == "tfds":
        return (f"config.input.source='tfds', data={input_cfg.data!r}, "
                f"split={input_cfg.get('split', 'train')!r}")
    return f"config.input.source={name!r}"


class _Puller:
    """Pulls the batches of steps start+1, start+2, ... from the tf.data iterator, in a
    background thread, into a small bounded queue; counts the skipped examples of each batch
    and saves the data position right after pulling the batch of a checkpoint step (so the
    position saved for step S is the one after batch S, however far ahead the thread runs).
    Queue items: ("ok", step, batch, skipped so far), ("error", exception) or ("stop",)."""

    def __init__(self, host: "HostBatches", lookahead: int):
        self.config, self.it, self.ckpt = host.config, host._it, host._ckpt
        self.state_dir, self.step = host._state_dir, host.step
        self.skipped, self.last_index = host.skipped, host._last_index
        self.flip_seeds = flip_seeds(host.config)
        self.queue: queue.Queue = queue.Queue(maxsize=lookahead)
        self.stopped = threading.Event()
        self.lookahead = lookahead

    def _put(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        total = self.config.get("total_steps") or 0
        try:
            while not self.stopped.is_set():
                if total and self.step >= total:
                    self._put(("stop",))
                    return
                batch = next(self.it)
                self.step += 1
                index, source = batch["index"].numpy(), batch["source"].numpy()
                skipped = count_skipped(index, source, self.last_index)
                self.skipped += skipped
                if self.state_dir and self._save_step(self.step):
                    self._save(self.step)
                out = {"image": batch["image"].numpy(), "text": batch["text"].numpy(),
                       "flip": np.zeros(len(index), bool)}
                for k, fseed in self.flip_seeds.items():
                    if fseed is not None:
                        out["flip"] |= (source == k) & flip_bits(fseed, index)
                if not self._put(("ok", self.step, out, skipped, self.skipped)):
                    return
        except StopIteration:
            self._put(("stop",))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._put(("error", e))

    def _save_step(self, step: int) -> bool:
        every = self.config.get("checkpoint_every_steps", 0)
        return step == self.config.total_steps or (every > 0 and step % every == 0)

    def _save(self, step: int) -> None:
        t0 = time.perf_counter()
        path = data_state_path(self.state_dir, step)
        self.ckpt.write(path)
        with tf.io.gfile.GFile(path + ".json", "w") as f:  # where the skip count stands
            json.dump({"last_index": self.last_index, "skipped": self.skipped}, f)
        logging.info("data: saved the input position of step %d (%.1fs)", step,
                     time.perf_counter() - t0)
        # Keep the states of the checkpoints orbax keeps, and those of the steps this thread
        # and the device prefetch have pulled ahead of the train step.
        keep = self.config.get("keep_checkpoints", 3) + 1 + self.lookahead + 1
        root = os.path.dirname(data_state_path(self.state_dir, step))
        steps = sorted({int(f.split(".")[0][5:]) for f in tf.io.gfile.listdir(root)
                        if f.startswith("step_")})
        for old in steps[:-keep]:
            for f in tf.io.gfile.glob(os.path.join(root, f"step_{old}.*")):
                tf.io.gfile.remove(f)


class HostBatches:
    """This process's numpy batches, numbered by train step, with the data position saved at
    checkpoint steps, a deadline on the first batch (config.input.first_batch_timeout_s) and
    one on every later batch (config.input.batch_timeout_s; 0 disables either).

    Yields dicts image uint8 `[b, H, W, 3]` (not flipped yet), text int32 `[b, L]`, flip bool
    `[b]` (`flip_bits`; applied on the device by the train step); counts skipped examples.
    The batches are pulled by a background thread (`_Puller`) a few steps ahead, so that a
    read that never returns (a stalled gs:// read) becomes a DataError naming the source and
    the step instead of a hang; the iterator stops after config.total_steps.
    """

    LOOKAHEAD = 2  # batches the background thread may hold beyond the one being consumed

    def __init__(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer, start_step: int,
                 state_dir: Optional[str] = None):
        self.config, self.step = config, start_step
        self.skipped = 0
        self._last_index: Dict[int, int] = {}  # per source: the last raw-record index seen
        self._ds = train_dataset(config, tokenizer, start_step)
        self._it = iter(self._ds)
        self._ckpt = None
        self._state_dir = state_dir if (state_dir and uses_iterator_checkpoint(config.input)) else None
        if self._state_dir:
            self._ckpt = tf.train.Checkpoint(iterator=self._it)
            path = data_state_path(self._state_dir, start_step)
            if start_step > 0:
                if not tf.io.gfile.exists(path + ".index"):
                    raise DataError(
                        f"resuming at step {start_step} but the data position {path} is missing; "
                        "the stream cannot continue exactly (delete the workdir to start over)")
                self._ckpt.read(path).assert_consumed()
                if tf.io.gfile.exists(path + ".json"):
                    with tf.io.gfile.GFile(path + ".json") as f:
                        state = json.load(f)
                    self._last_index = {int(k): v for k, v in state["last_index"].items()}
                    self.skipped = state["skipped"]
                logging.info("data: restored the input position of step %d from %s", start_step, path)
        self._summary = source_summary(config.input)  # now: reading nothing once stalled
        # The batches are fetched in the background from now on (the first overlaps the
        # compilation of the train step).
        self._started = time.monotonic()
        self._first = True
        self._done = False
        self._puller = _Puller(self, self.LOOKAHEAD)
        # The thread holds the puller, not this object: once this object is gone, the
        # finalizer stops the thread (and it drops the tf.data iterator).
        weakref.finalize(self, self._puller.stopped.set)
        threading.Thread(target=self._puller.run, daemon=True,
                         name=f"HostBatches@{start_step}").start()

    def close(self) -> None:
        """Stops the background thread (also done when this object is garbage collected)."""
        self._puller.stopped.set()

    def _get(self):
        icfg = self.config.input
        if self._first:
            timeout = icfg.get("first_batch_timeout_s", 300)
            wait = max(0.0, timeout - (time.monotonic() - self._started)) if timeout else None
        else:
            timeout = icfg.get("batch_timeout_s", 600)
            wait = timeout or None
        try:
            return self._puller.queue.get(timeout=wait)
        except queue.Empty:
            pass
        if self._first:
            describe = _DESCRIBE.get(icfg.source)
            what = describe(icfg) if describe else icfg.source
            raise DataError(
                f"no training batch arrived within config.input.first_batch_timeout_s={timeout}s "
                f"from config.input.source={icfg.source!r}: every example was "
                f"dropped or nothing could be read. {what}") from None
        raise DataError(
            f"the training batch of step {self.step + 1} did not arrive within "
            f"config.input.batch_timeout_s={timeout}s (the batches before it did): the input "
            f"stalled, e.g. on a read that never returns. {self._summary}. "
            "(config.input.batch_timeout_s=0 waits forever.)") from None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._done:
            raise StopIteration
        item = self._get()
        self._first = False
        if item[0] == "stop":
            self._done = True
            raise StopIteration
        if item[0] == "error":
            self._done = True
            raise item[1]
        _, self.step, batch, skipped, self.skipped = item
        if skipped:
            logging.warning("data: skipped %d broken examples (total %d)", skipped, self.skipped)
        return batch


class DeviceBatches:
    """Global batches on the devices (see prefetch_to_device) plus the data metrics."""

    def __init__(self, host: HostBatches, sharding: jax.sharding.Sharding, size: int):
        self.host = host
        self._it = prefetch_to_device(host, sharding, size)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def metrics(self) -> dict:
        """Scalars to log: broken examples skipped so far by this process."""
        return {"data/skipped": float(self.host.skipped)}


def train_iterator(config: ml_collections.ConfigDict, tokenizer: Tokenizer, start_step: int,
                   sharding: jax.sharding.Sharding,
                   state_dir: Optional[str] = None) -> DeviceBatches:
    """Global training batches from `start_step` on, already on the devices. With `state_dir`,
    file sources save / restore their position there (see module docstring)."""
    host = HostBatches(config, tokenizer, start_step, state_dir)
    return DeviceBatches(host, sharding, config.input.get("prefetch", 2))
