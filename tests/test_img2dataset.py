"""Real img2dataset shards (webdataset .tar and TFRecord) with broken members: read, decode,
count what is broken, train on them, resume exactly, fail fast; TFDS through mock_data;
weighted mixtures."""
import os
import re
import subprocess
import sys
import threading
import time
import tarfile

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import shard_writers as sw
from conftest import REPO, tiny_config
from maeclip_jax import train, validation
from maeclip_jax.data import pipeline, shards
from maeclip_jax.data.tokenizer import from_config

GOOD = {"s0": range(0, 12), "s1": range(12, 20)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Both formats: s0 (12 good + 5 broken), s1 (8 good), s2 truncated mid-archive (tar) /
    mid-record (TFRecord), and an empty shard."""
    d = tmp_path_factory.mktemp("shards")
    good = {}
    for fmt, write in (("tar", sw.write_tar), ("tfrecord", sw.write_tfrecord)):
        caps = write(str(d / f"s0.{fmt}"), GOOD["s0"], sw.BROKEN_KINDS)
        caps += write(str(d / f"s1.{fmt}"), GOOD["s1"])
        full = str(d / f"full.{fmt}")
        caps_s2 = write(full, range(30, 36))
        raw = open(full, "rb").read()
        cut = int(len(raw) * 0.6)
        if fmt == "tar":  # cut inside the 4th sample's image: 3 complete samples remain
            with tarfile.open(full) as tar:
                cut = tar.getmembers()[9].offset_data + 10
        os.remove(full)
        open(d / f"s2.{fmt}", "wb").write(raw[:cut])
        open(d / f"s3.{fmt}", "wb").close()  # empty shard
        good[fmt] = (caps, caps_s2)
    return d, good


def _source_examples(config, n):
    """(caption, broken records dropped just before it, image) of the source's first n."""
    ds = pipeline._SOURCES[config.input.source](config.input, config.seed, 0)
    out, last = [], {}
    for ex in ds.take(n).as_numpy_iterator():
        skipped = pipeline.count_skipped(np.array([ex["index"]]), np.array([0]), last)
        out.append((ex["text"].decode(), skipped, ex["image"]))
    return out


@pytest.mark.parametrize("fmt", ["tar", "tfrecord"])
def test_one_pass_delivers_every_good_example_and_counts_the_broken(data_dir, fmt):
    d, good = data_dir
    caps, caps_s2 = good[fmt]
    # Shards in order s0..s3, one at a time, no shuffle buffer: one pass is the first
    # examples, and the pass after starts with a good example of s0 (which then carries the
    # count of the broken records that ended the previous pass).
    config = tiny_config(**{"input.source": "img2dataset", "input.data": str(d / f"s*.{fmt}"),
                            "input.cycle_length": 1, "input.shuffle_buffer": 0,
                            "input.shuffle_files": False})
    got_s2 = None
    out = _source_examples(config, 60)
    texts = [t for t, _, _ in out]
    # The good examples of s2 that precede the cut arrive; find how many from the stream.
    s2_seen = [t for t in texts[: len(caps) + len(caps_s2)] if t in caps_s2]
    got_s2 = len(set(s2_seen))
    assert 1 <= got_s2 < len(caps_s2)  # some before the cut, not all
    if fmt == "tar":
        assert got_s2 == 3
    n_pass = len(caps) + got_s2
    assert sorted(texts[:n_pass]) == sorted(caps + caps_s2[:got_s2])
    # Broken: 5 members of s0, s2's truncation (tar: 1; TFRecord: the read error ends the
    # shard, uncountable), the empty shard s3 (1).
    broken = 5 + 1 + (1 if fmt == "tar" else 0)
    assert sum(s for _, s, _ in out[: n_pass + 1]) == broken
    for _, _, img in out:
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert all(t in caps + caps_s2 for t in texts)  # later passes: the same examples only


def _last_skipped(log: str) -> float:
    return float(re.findall(r"data/skipped=([0-9.e+]+)", log)[-1])


def _params(workdir, step):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return tf.nest.flatten(state["params"])


@pytest.mark.slow
def test_train_on_tar_shards_then_resume_sees_the_same_batches(data_dir, tmp_path, caplog):
    """Train 6 steps on shards with broken members (checkpoints at 3 and 6; skipped examples
    logged). Then delete the step-6 checkpoint and its data position, so that a rerun resumes
    from step 3 (model state + tf.data iterator state, shuffle buffer included) and trains
    4..6 again: the parameters must be bitwise those of the uninterrupted run (on CPU, XLA is
    deterministic for a fixed program and input, so any difference is a different batch)."""
    d, _ = data_dir
    config = tiny_config(**{"input.source": "img2dataset", "input.data": str(d / "s*.tar"),
                            "total_steps": 6, "log_every_steps": 3, "checkpoint_every_steps": 3,
                            "keep_checkpoints": 5, "input.shuffle_buffer": 32})
    config.evals = {}
    w = str(tmp_path)
    with caplog.at_level("INFO"):
        assert train.train_and_evaluate(config, w)["step"] == 6
    assert "data/skipped=" in caplog.text
    skipped_uninterrupted = _last_skipped(caplog.text)
    assert skipped_uninterrupted > 0  # the broken members were met and counted
    state_dir = os.path.join(w, "data_state", "process_0")
    assert sorted(os.listdir(state_dir)) == [f"step_{s}.{e}" for s in (3, 6)
                                             for e in ("data-00000-of-00001", "index", "json")]
    at3, uninterrupted = _params(w, 3), _params(w, 6)
    tf.io.gfile.rmtree(os.path.join(w, "checkpoints", "6"))
    for f in tf.io.gfile.glob(os.path.join(state_dir, "step_6.*")):
        tf.io.gfile.remove(f)
    caplog.clear()
    with caplog.at_level("INFO"):
        train.train_and_evaluate(config, w)
    assert "restored the input position of step 3" in caplog.text
    assert _last_skipped(caplog.text) == skipped_uninterrupted  # the count resumes exactly
    resumed = _params(w, 6)
    assert any(not np.array_equal(x, y) for x, y in zip(at3, uninterrupted))
    for x, y in zip(uninterrupted, resumed):
        np.testing.assert_array_equal(x, y)


def test_a_glob_that_matches_nothing_fails_at_start_up_naming_it(tmp_path):
    pattern = str(tmp_path / "nothing-*.tar")
    config = tiny_config(**{"input.source": "img2dataset", "input.data": pattern})
    with pytest.raises(shards.DataError, match="nothing-"):
        validation.validate(config, 8)


def test_brace_patterns_expand_with_zero_padding():
    assert shards._expand_braces("a/{000..002}.tar") == ["a/000.tar", "a/001.tar", "a/002.tar"]
    assert shards._expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]


@pytest.mark.slow
def test_shards_with_other_member_names_fail_naming_a_shard_and_its_keys(tmp_path):
    """Members KEY.jpg + KEY.caption (no .txt): every example is dropped; the run must stop
    with an error that names a shard and the extensions found, not hang."""
    import tarfile, io
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            jpg, cap = sw.example(i)
            for name, data in ((f"{i:05d}.jpg", jpg), (f"{i:05d}.caption", cap.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cmd = [sys.executable, "-m", "maeclip_jax.main", f"--config={REPO}/configs/maeclip_tiny.py",
           f"--workdir={tmp_path / 'w'}", "--config.input.source=img2dataset",
           f"--config.input.data={path}", "--config.input.first_batch_timeout_s=5",
           "--config.batch_size=8", "--config.input.image_size=32",
           "--config.model.image.variant=test/8", "--config.model.text.variant=test",
           "--config.model.decoder.width=32", "--config.model.decoder.mlp_dim=64",
           "--config.model.decoder.num_heads=2", "--config.model.embed_dim=32"]
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert p.returncode != 0
    assert "no training batch arrived" in p.stderr
    assert str(path) in p.stderr and "'caption'" in p.stderr


def test_mixture_samples_sources_by_weight(data_dir):
    d, good = data_dir
    config = tiny_config(**{"input.source": "mixture", "input.shuffle_buffer": 0})
    config.input.mixture = {
        "tar": {"source": "img2dataset", "data": str(d / "s1.tar"), "weight": 3.0},
        "synthetic": {"source": "builtin", "weight": 1.0},
    }
    validation.validate(config, 8)
    tar_caps = set(good["tar"][0])
    out = _source_examples(config, 400)
    frac = np.mean([t in tar_caps for t, _, _ in out])
    # Binomial(400, 0.75): sd 0.022; 4 sd either side.
    assert 0.66 < frac < 0.84


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds
    config = tiny_config(**{"input.source": "tfds", "input.data": "imagenet2012",
                            "input.text_key": "file_name", "input.shuffle_buffer": 0})
    with tfds.testing.mock_data(num_examples=6):
        ds = pipeline.train_dataset(config, from_config(config.input), 0)
        batch = next(iter(ds))
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == tf.uint8
    assert batch["text"].shape == (16, 12)
    # Every caption ends with exactly one end-of-text token.
    assert (np.sum(batch["text"].numpy() == 1, axis=1) == 1).all()


def test_count_skipped_counts_index_gaps_per_source_by_hand():
    last = {}
    # Source 0 delivers records 0, 1, 4 (2 and 3 dropped); source 1 delivers 2 (0, 1 dropped).
    assert pipeline.count_skipped(np.array([0, 2, 1, 4]), np.array([0, 1, 0, 0]), last) == 4
    assert last == {0: 4, 1: 2}
    # Next batch: source 1 goes on at 3 (no gap), source 0 jumps from 4 to 7 (5, 6 dropped).
    assert pipeline.count_skipped(np.array([3, 7]), np.array([1, 0]), last) == 2
    assert pipeline.count_skipped(np.array([8, 9]), np.array([0, 0]), last) == 0


def test_train_on_tfrecord_shards_counts_the_broken_and_trains_on_the_rest(data_dir, tmp_path,
                                                                         caplog):
    """End to end on TFRecord shards (s0: 12 good + 5 broken records, s1: 8 good, s2 truncated
    mid-record, s3 empty), read in a fixed order: 2 steps of 16 take one pass over the good
    examples plus 9 of the next; the broken records met on the way are exactly the 5 of s0 and
    the empty shard (a truncated TFRecord tail cannot be counted), and every batch is full."""
    d, _ = data_dir
    config = tiny_config(**{"input.source": "img2dataset", "input.data": str(d / "s*.tfrecord"),
                            "input.cycle_length": 1, "input.shuffle_buffer": 0,
                            "input.shuffle_files": False, "total_steps": 2,
                            "log_every_steps": 1, "checkpoint_every_steps": 2})
    config.evals = {}
    with caplog.at_level("INFO"):
        assert train.train_and_evaluate(config, str(tmp_path))["step"] == 2
    assert _last_skipped(caplog.text) == 6
    assert os.path.exists(os.path.join(tmp_path, "data_state", "process_0", "step_2.index"))
    losses = [float(x) for x in re.findall(r"\bloss=([0-9.e+-]+)", caplog.text)]
    assert losses and all(np.isfinite(losses))


def test_a_batch_that_stalls_after_the_first_fails_naming_the_source_and_step(tmp_path):
    """Two good shards, then one whose read never returns (a FIFO nobody writes: open()
    blocks, as a stalled gs:// read would). Batches 1 and 2 arrive; batch 3 must fail within
    config.input.batch_timeout_s with a DataError naming the data and the step, not hang."""
    for k in range(2):
        sw.write_tfrecord(str(tmp_path / f"s{k}.tfrecord"), range(16 * k, 16 * k + 16))
    fifo = tmp_path / "s2.tfrecord"
    os.mkfifo(fifo)
    config = tiny_config(**{"input.source": "img2dataset", "input.data": str(tmp_path / "s*.tfrecord"),
                            "input.cycle_length": 1, "input.shuffle_buffer": 0,
                            "input.shuffle_files": False, "input.batch_timeout_s": 2,
                            "total_steps": 5})
    host = pipeline.HostBatches(config, from_config(config.input), 0)
    try:
        for _ in range(2):
            assert next(host)["image"].shape == (16, 32, 32, 3)
        # next() runs in a thread, so that a regression (a hang) fails here instead of
        # hanging the test run.
        result = {}

        def third():
            try:
                next(host)
                result["error"] = None
            except Exception as e:  # noqa: BLE001
                result["error"] = e
        t = threading.Thread(target=third, daemon=True)
        t.start()
        t.join(60)
        assert "error" in result, "no error within 60 s: the stalled batch hangs"
        assert isinstance(result["error"], shards.DataError), result["error"]
        msg = str(result["error"])
        assert "step 3" in msg and "batch_timeout_s=2" in msg and str(tmp_path) in msg, msg
    finally:
        host.close()
        # Unblock the reader (EOF: an empty shard), so that no TF thread stays stuck in open().
        for _ in range(50):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                break
            except OSError:  # no reader has it open (yet)
                time.sleep(0.1)


def test_every_input_field_the_data_code_reads_has_a_default_so_flags_can_set_it():
    """`--config.input.X=...` only works for fields in base_config; the data code reads some
    with .get(default), which would hide a missing one (num_threads was)."""
    from maeclip_jax import config_lib
    base = config_lib.base_config().input
    read = set()
    for name in ("pipeline.py", "shards.py", "tokenizer.py", "images.py"):
        src = open(os.path.join(REPO, "maeclip_jax", "data", name)).read()
        read |= set(re.findall(r"(?:input_cfg|icfg|config\.input|\.input)\.get\(\"(\w+)\"", src))
    assert {"num_threads", "batch_timeout_s", "first_batch_timeout_s"} <= read
    assert sorted(read - set(base.keys())) == []
    assert base.num_threads == 0 and base.batch_timeout_s > 0


def test_a_tar_stored_inside_a_tar_shard_is_one_member_not_more_samples(tmp_path):
    """The tar index takes the chain of headers from block 0: the headers of a tar stored
    as a member (blocks that look like headers inside a member's data) are not samples."""
    import io
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        for name in ("x.jpg", "x.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    path = tmp_path / "nested.tar"
    caps = []
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            jpg, cap = sw.example(i)
            caps.append(cap)
            members = [(f"{i:03d}.jpg", jpg), (f"{i:03d}.txt", cap.encode())]
            if i == 1:
                members.append((f"{i:03d}.tar", inner.getvalue()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    records = list(shards.read_tar(tf.constant(str(path))).as_numpy_iterator())
    assert [r["key"].decode() for r in records] == ["000", "001", "002"]
    assert [r["txt"].decode() for r in records] == caps and all(r["ok"] for r in records)


def test_flip_marks_come_from_the_index_and_never_touch_the_built_in_scenes(data_dir):
    """Host batches carry a flip mark per example (applied on the device): a pure function of
    (seed, raw-record index), about half of the file examples, never a built-in scene (their
    captions say left and right), and the same marks when the stream is read again."""
    bits = pipeline.flip_bits(7, np.arange(4000))
    assert 0.45 < bits.mean() < 0.55  # Binomial(4000, 0.5): sd 0.008
    np.testing.assert_array_equal(bits, pipeline.flip_bits(7, np.arange(4000)))
    assert (bits != pipeline.flip_bits(8, np.arange(4000))).mean() > 0.4
    d, _ = data_dir
    config = tiny_config(**{"input.source": "mixture", "input.shuffle_buffer": 0,
                            "total_steps": 6})
    config.input.mixture = {
        "tar": {"source": "img2dataset", "data": str(d / "s[01].tar"), "weight": 1.0},
        "synthetic": {"source": "builtin", "weight": 1.0},
    }
    tok = from_config(config.input)
    seeds = pipeline.flip_seeds(config)
    syn, tar = 0, 1  # mixture parts are numbered in sorted name order
    assert seeds[syn] is None and seeds[tar] is not None

    def read():
        host = pipeline.HostBatches(config, tok, 0)
        out = [next(host) for _ in range(6)]
        ds = pipeline.train_dataset(config, tok, 0)  # the same stream: which part, which index
        meta = [(b["source"].numpy(), b["index"].numpy()) for b in ds.take(6)]
        return out, meta

    (batches, meta), (again, _) = read(), read()
    flips = np.concatenate([b["flip"] for b in batches])
    source = np.concatenate([m[0] for m in meta])
    index = np.concatenate([m[1] for m in meta])
    assert not flips[source == syn].any()
    np.testing.assert_array_equal(flips[source == tar],
                                  pipeline.flip_bits(seeds[tar], index[source == tar]))
    assert 0 < flips[source == tar].mean() < 1
    np.testing.assert_array_equal(flips, np.concatenate([b["flip"] for b in again]))
    config.input.mixture.tar.flip = False
    assert all(s is None for s in pipeline.flip_seeds(config).values())
