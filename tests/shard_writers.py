"""Writes real img2dataset-style shards for tests and benchmarks: webdataset .tar (KEY.jpg,
KEY.txt, KEY.json) and TFRecord (features jpg, txt, key), with real JPEG bytes and captions
from the built-in dataset, plus deliberately broken members."""
import io
import json
import tarfile
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from maeclip_jax.data import builtin

BROKEN_KINDS = ("corrupt_jpeg", "truncated_jpeg", "empty_caption", "non_utf8", "no_image")


def example(index: int, image_size: int = 48, seed: int = 0):
    """(jpeg bytes, caption) of built-in example `index`."""
    ex = builtin.generate_scene(seed, "train", index, image_size)
    return tf.io.encode_jpeg(ex["image"], quality=90).numpy(), ex["caption"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def broken_member(kind: str, index: int, image_size: int = 48):
    """(jpeg bytes or None, caption bytes) for one broken example of `kind`."""
    jpg, cap = example(index, image_size)
    cap = cap.encode()
    if kind == "corrupt_jpeg":
        return b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(index).integers(0, 256, 300,
                                                                                  dtype=np.uint8)), cap
    if kind == "truncated_jpeg":
        return jpg[: len(jpg) // 3], cap
    if kind == "empty_caption":
        return jpg, b"   "
    if kind == "non_utf8":
        return jpg, b"a red \xff\xfe circle"
    if kind == "no_image":
        return None, cap
    raise ValueError(kind)


def write_tar(path: str, indices: Sequence[int], broken: Sequence[str] = (),
              image_size: int = 48, captions: Sequence[str] = None) -> List[str]:
    """A webdataset shard of good examples `indices` followed by one member per broken kind.
    `captions` (one per index; may hold several lines, as Flickr30k's 5 captions an image)
    replace the built-in captions. Returns the captions of the good examples."""
    caps = []
    with tarfile.open(path, "w") as tar:
        for j, i in enumerate(indices):
            jpg, cap = example(i, image_size)
            cap = cap if captions is None else captions[j]
            key = f"{i:09d}"
            _add(tar, key + ".jpg", jpg)
            _add(tar, key + ".txt", cap.encode())
            _add(tar, key + ".json", json.dumps({"key": key, "caption": cap}).encode())
            caps.append(cap)
        for j, kind in enumerate(broken):
            jpg, cap = broken_member(kind, 10_000 + j, image_size)
            key = f"bad{j:06d}"
            if jpg is not None:
                _add(tar, key + ".jpg", jpg)
            _add(tar, key + ".txt", cap)
    return caps


def write_tfrecord(path: str, indices: Sequence[int], broken: Sequence[str] = (),
                   image_size: int = 48, captions: Sequence[str] = None) -> List[str]:
    """A TFRecord shard as img2dataset writes it (bytes features jpg, txt, key); `captions`
    as in write_tar."""
    def feature(b):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
    caps = []
    with tf.io.TFRecordWriter(path) as w:
        rows = []
        for j, i in enumerate(indices):
            jpg, cap = example(i, image_size)
            rows.append((jpg, (cap if captions is None else captions[j]).encode(), f"{i:09d}"))
        caps = [r[1].decode() for r in rows]
        for j, kind in enumerate(broken):
            jpg, cap = broken_member(kind, 10_000 + j, image_size)
            rows.append((jpg or b"", cap, f"bad{j:06d}"))
        for jpg, cap, key in rows:
            ex = tf.train.Example(features=tf.train.Features(feature={
                "jpg": feature(jpg), "txt": feature(cap), "key": feature(key.encode())}))
            w.write(ex.SerializeToString())
    return caps
