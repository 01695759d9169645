"""img2dataset shards as tf.data streams of raw records, read entirely inside the TF graph.

img2dataset writes two common formats:
  - webdataset `.tar` shards: members `KEY.jpg`, `KEY.txt`, `KEY.json` (one key per sample);
  - TFRecord shards (`.tfrecord`): tf.train.Example with bytes features `jpg`, `txt`, `key`.

The tar reader yields dicts `{"jpg": string (encoded image bytes), "txt": string, "key":
string, "ok": bool}`; a record with ok=False stands for something broken that must be counted,
not trained on: a sample missing its image or caption member, an empty shard, a truncated tar.
The TFRecord reader yields serialized Examples, which `parse_tfrecord` turns into `{"jpg",
"txt"}` inside the pipeline's per-example map (a broken one has an empty image or caption).

The tar reader is pure TensorFlow (a tf.while_loop over the 512-byte tar headers of the shard's
bytes), not a Python generator, so the whole pipeline stays checkpointable with tf.data iterator
checkpointing (exact resume) and runs without the GIL. It reads regular-file members only ('0'
or NUL type flag), which is what img2dataset writes; pax / GNU long-name headers are skipped.
"""
import re
import tarfile
from typing import Dict, List, Sequence

import tensorflow as tf

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt",)


class DataError(ValueError):
    """Training data cannot be read as configured; the message names the file or pattern."""


def _expand_braces(pattern: str) -> List[str]:
    """'a/{000..002}.tar' -> ['a/000.tar', 'a/001.tar', 'a/002.tar']; '{x,y}' alternatives too.
    Ranges keep the zero-padding of their first bound (as img2dataset names shards)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail, body = pattern[:m.start()], pattern[m.end():], m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo)
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for o in options for p in _expand_braces(head + o + tail)]


def list_files(patterns: str) -> List[str]:
    """Files matching a comma-free list of glob / brace patterns separated by ';' (local or
    gs:// through tf.io.gfile). Raises DataError naming any pattern that matches nothing."""
    files: List[str] = []
    for pattern in [p.strip() for p in patterns.split(";") if p.strip()]:
        found = []
        for p in _expand_braces(pattern):
            if any(c in p for c in "*?["):
                found.extend(sorted(tf.io.gfile.glob(p)))
            elif tf.io.gfile.exists(p):
                found.append(p)
        if not found:
            raise DataError(f"config.input.data pattern {pattern!r} matches no file")
        files.extend(found)
    return files


def shard_format(path: str, fmt: str = "auto") -> str:
    """'tar' or 'tfrecord': from `fmt` if given, else from the file extension."""
    if fmt != "auto":
        if fmt not in ("tar", "tfrecord"):
            raise DataError(f"config.input.format={fmt!r}; choose 'auto', 'tar' or 'tfrecord'")
        return fmt
    if path.endswith(".tar"):
        return "tar"
    if re.search(r"\.(tfrecord|tfrec|tfrecords)(-\d+-of-\d+)?$", path) or ".tfrecord" in path:
        return "tfrecord"
    raise DataError(f"cannot tell the shard format of {path!r} from its extension (.tar or "
                    ".tfrecord); set config.input.format='tar' or 'tfrecord'")


# ----------------------------------------------------------------------------- tar, in graph


def _octal(field: tf.Tensor) -> tf.Tensor:
    """uint8 [..., n] ASCII octal digits (leading spaces allowed, terminated by NUL / space)
    -> int64 [...]."""
    d = tf.cast(field, tf.int64)
    digit = (d >= 48) & (d <= 55)
    started = tf.cast(tf.math.cumsum(tf.cast(digit, tf.int64), axis=-1), tf.bool)
    lead = tf.logical_not(started)  # leading spaces / zeros before the first digit
    valid = tf.cast(tf.math.cumprod(tf.cast(digit | lead, tf.int64), axis=-1), tf.bool) & digit
    n_valid = tf.reduce_sum(tf.cast(valid, tf.int64), axis=-1, keepdims=True)
    rank = tf.math.cumsum(tf.cast(valid, tf.int64), axis=-1)  # 1.. over the digits
    powers = tf.pow(tf.constant(8, tf.int64), tf.maximum(n_valid - rank, 0))
    return tf.reduce_sum(tf.where(valid, (d - 48) * powers, 0), axis=-1)


def _tar_index_vectorised(data: tf.Tensor):
    """The fast path of `_tar_index`: every 512-byte block that carries the ustar magic and a
    valid header checksum is a header; the headers must chain (each member's data ends where
    the next header starts), which `consistent` reports. Same outputs as `_tar_index`, plus
    `consistent` (False: use the header walk)."""
    n = tf.cast(tf.strings.length(data), tf.int64)
    nblocks = n // 512
    raw = tf.reshape(tf.io.decode_raw(
        tf.strings.substr(data, tf.constant(0, tf.int64), nblocks * 512), tf.uint8),
                     [-1, 512])
    magic = tf.constant(list(b"ustar"), tf.uint8)
    cand = tf.where(tf.reduce_all(tf.equal(raw[:, 257:262], magic), axis=1))[:, 0]
    hdr = tf.cast(tf.gather(raw, cand), tf.int64)
    computed = tf.reduce_sum(hdr, 1) - tf.reduce_sum(hdr[:, 148:156], 1) + 8 * 32
    is_hdr = tf.equal(computed, _octal(hdr[:, 148:156]))
    pos, hdr = tf.boolean_mask(cand, is_hdr), tf.boolean_mask(hdr, is_hdr)
    k = tf.size(pos, out_type=tf.int64)
    size = _octal(hdr[:, 124:136])
    nxt = pos + 1 + (size + 511) // 512  # block after the member's data
    consistent = tf.reduce_all(tf.equal(nxt[:-1], pos[1:]))
    last_next = tf.reduce_max(tf.concat([nxt, tf.zeros([1], tf.int64)], 0))
    fits = (pos + 1) * 512 + size <= n  # the member's data is all there
    # An archive that was closed properly ends with a zero block after the last member.
    end_block = tf.gather(tf.concat([raw, tf.zeros([1, 512], tf.uint8)], 0),
                          tf.minimum(last_next, nblocks))
    closed = tf.logical_and(last_next < nblocks, tf.reduce_all(tf.equal(end_block, 0)))
    truncated = tf.logical_and(k > 0, tf.logical_or(tf.logical_not(tf.reduce_all(fits)),
                                                    tf.logical_not(closed)))
    kind = hdr[:, 156]
    keep = fits & (tf.equal(kind, 48) | tf.equal(kind, 0))
    name_len = tf.argmin(tf.concat([hdr[:, :100], tf.zeros([k, 1], tf.int64)], 1), axis=1)
    names = tf.strings.substr(data, pos * 512, name_len)
    return (tf.boolean_mask(names, keep), tf.boolean_mask((pos + 1) * 512, keep),
            tf.boolean_mask(size, keep), truncated, consistent)


def _tar_index(data: tf.Tensor):
    """(names, starts, sizes, truncated) of the archive: the vectorised scan when its headers
    chain, else the header-by-header walk."""
    fast = _tar_index_vectorised(data)
    return tf.cond(fast[4], lambda: fast[:4], lambda: _tar_index_walk(data))


def _tar_index_walk(data: tf.Tensor):
    """Walks the tar headers of `data` (the whole archive, a scalar string).

    Returns (names [m] string, starts [m] int64, sizes [m] int64, truncated bool): the regular
    files found, and whether the archive ends inside a header or a member's data.
    """
    n = tf.cast(tf.strings.length(data), tf.int64)  # shards are < 2 GiB

    def body(off, names, starts, sizes, truncated, done):
        left = n - off
        header = tf.io.decode_raw(tf.strings.substr(data, off, tf.minimum(left, 512)), tf.uint8)
        header = tf.pad(header, [[0, 512 - tf.shape(header)[0]]])
        end = tf.reduce_all(tf.equal(header, 0))  # a zero block: end of archive (or padding)
        short = left < 512
        name_len = tf.argmin(tf.concat([header[:100], tf.zeros([1], tf.uint8)], 0),
                             output_type=tf.int32)
        name = tf.strings.substr(data, off, tf.cast(name_len, tf.int64))
        size = _octal(header[124:136])
        kind = header[156]
        regular = tf.logical_or(tf.equal(kind, 48), tf.equal(kind, 0))
        cut = tf.logical_or(tf.logical_and(short, tf.logical_not(end)), off + 512 + size > n)
        stop = tf.logical_or(end, cut)
        keep = tf.logical_and(tf.logical_not(stop), regular)
        idx = names.size()
        names = tf.cond(keep, lambda: names.write(idx, name), lambda: names)
        starts = tf.cond(keep, lambda: starts.write(idx, off + 512), lambda: starts)
        sizes = tf.cond(keep, lambda: sizes.write(idx, size), lambda: sizes)
        nxt = off + 512 + (size + 511) // 512 * 512
        return nxt, names, starts, sizes, tf.logical_or(truncated, cut), stop

    init = (tf.constant(0, tf.int64), tf.TensorArray(tf.string, 0, dynamic_size=True),
            tf.TensorArray(tf.int64, 0, dynamic_size=True),
            tf.TensorArray(tf.int64, 0, dynamic_size=True), tf.constant(False), tf.constant(False))
    _, names, starts, sizes, truncated, _ = tf.while_loop(
        lambda off, *rest: tf.logical_and(tf.logical_not(rest[-1]), off < n), body, init)
    return names.stack(), starts.stack(), sizes.stack(), truncated


def _member_of(exts: Sequence[str], ext: tf.Tensor, key_idx: tf.Tensor, num_keys) -> tf.Tensor:
    """For every key, the index of its member with one of `exts` (-1 if none)."""
    hit = tf.reduce_any(tf.equal(ext[:, None], tf.constant(list(exts))[None, :]), axis=1)
    member = tf.where(hit, tf.range(tf.shape(ext, out_type=tf.int64)[0]), -1)
    return tf.math.unsorted_segment_max(member, key_idx, num_keys)


def read_tar(path: tf.Tensor) -> tf.data.Dataset:
    """One webdataset tar shard -> records (see module docstring), in archive order."""
    data = tf.io.read_file(path)
    names, starts, sizes, truncated = _tar_index(data)
    keys = tf.strings.regex_replace(names, r"\.[^./]*$", "")
    ext = tf.strings.lower(tf.strings.regex_replace(names, r"^.*\.", ""))
    ukeys, key_idx = tf.unique(keys, out_idx=tf.int64)
    num_keys = tf.size(ukeys, out_type=tf.int64)
    img = _member_of(IMAGE_EXTS, ext, key_idx, num_keys)
    txt = _member_of(TEXT_EXTS, ext, key_idx, num_keys)
    # A missing member (-1) points at an appended empty slice.
    m = tf.size(starts, out_type=tf.int64)
    starts = tf.concat([starts, tf.zeros([1], tf.int64)], 0)
    sizes = tf.concat([sizes, tf.zeros([1], tf.int64)], 0)
    img_at, txt_at = tf.where(img >= 0, img, m), tf.where(txt >= 0, txt, m)
    jpg = tf.strings.substr(data, tf.gather(starts, img_at), tf.gather(sizes, img_at))
    cap = tf.strings.substr(data, tf.gather(starts, txt_at), tf.gather(sizes, txt_at))
    ok = (img >= 0) & (txt >= 0)
    # An empty or truncated shard leaves one broken record, so that it is counted.
    bad = tf.cast(tf.logical_or(truncated, tf.equal(num_keys, 0)), tf.int64)
    records = {
        "jpg": tf.concat([jpg, tf.fill([bad], "")], 0),
        "txt": tf.concat([cap, tf.fill([bad], "")], 0),
        "key": tf.concat([ukeys, tf.fill([bad], path)], 0),
        "ok": tf.concat([ok, tf.fill([bad], False)], 0),
    }
    return tf.data.Dataset.from_tensor_slices(records)


# ----------------------------------------------------------------------------- TFRecord

_TFRECORD_FEATURES = {
    "jpg": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "txt": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "key": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_PARSE_FEATURES = {k: _TFRECORD_FEATURES[k] for k in ("jpg", "txt")}


def read_tfrecord(path: tf.Tensor) -> tf.data.Dataset:
    """One img2dataset TFRecord shard -> serialized tf.train.Example strings (parsed later, by
    `parse_tfrecord`, inside the pipeline's one per-example map). A corrupt or truncated
    record ends the shard there (its lost tail cannot be counted: TFRecord has no index); an
    empty shard yields one empty string, which parses into a broken record, so that it is
    counted.

    No per-record function runs here (each per-element tf.data function call costs about as
    much as 10% of decoding a 256 px JPEG): the shard is opened twice, once for its first
    record (or the empty marker when it has none) and once for the rest."""
    def records():
        return tf.data.TFRecordDataset(path).ignore_errors()
    marker = tf.data.Dataset.from_tensors(tf.constant(""))
    first = records().take(1).concatenate(marker).take(1)
    return first.concatenate(records().skip(1))


def parse_tfrecord(serialized: tf.Tensor) -> dict:
    """A serialized img2dataset Example -> record {jpg, txt} (only what training reads: every
    op here runs once per example). A missing feature is empty, which the pipeline drops: an
    empty image fails to decode, an empty caption is blank; the empty-shard marker ("")
    parses into such a record."""
    return tf.io.parse_single_example(serialized, _PARSE_FEATURES)


READERS = {"tar": read_tar, "tfrecord": read_tfrecord}
# Per-record work done inside the pipeline's per-example map (None: records are ready).
PARSERS = {"tar": None, "tfrecord": parse_tfrecord}


# ----------------------------------------------------------------------------- diagnostics


def describe_shard(path: str, limit: int = 12) -> str:
    """A short human description of what a shard holds (member names or feature keys), for
    error messages when nothing usable arrives from it."""
    try:
        fmt = shard_format(path)
    except DataError as e:
        return str(e)
    try:
        if fmt == "tar":
            with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                names = []
                for member in tar:
                    names.append(member.name)
                    if len(names) >= limit:
                        break
            exts = sorted({n.rsplit(".", 1)[-1] for n in names if "." in n})
            return (f"tar shard {path} holds members {names} (extensions {exts}); expected "
                    f"KEY.jpg and KEY.txt members (image extensions {list(IMAGE_EXTS)})")
        for raw in tf.data.TFRecordDataset(path).take(1):
            ex = tf.train.Example.FromString(raw.numpy())
            keys: Dict[str, str] = {k: v.WhichOneof("kind") for k, v in ex.features.feature.items()}
            return (f"TFRecord shard {path}: first record has features {keys}; expected "
                    f"bytes features {sorted(_TFRECORD_FEATURES)}")
        return f"TFRecord shard {path} holds no record"
    except Exception as e:  # noqa: BLE001 - a description must never raise
        return f"shard {path} could not be read: {type(e).__name__}: {e}"
