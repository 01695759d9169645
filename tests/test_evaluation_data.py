"""The evaluators' data and config plumbing without a model: the one centre crop, captions as
lines, img2dataset and TFDS readers (real shards, tfds.testing.mock_data), the error paths, a
flat results.json, and every evaluator field settable from the command line."""
import glob
import json
import os
import re

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import shard_writers
from conftest import REPO
from maeclip_jax.evaluation import common, report, retrieval, zero_shot

# --- the centre crop ---


def test_resize_center_crop_keeps_the_middle_of_the_longer_side():
    # A vertical ramp (value 4 * row) 64 x 32: the shorter side (32) goes to 16 (x 0.5), the
    # 32 resized rows are cropped to the middle 16 (8..24), i.e. original rows 16..48. Halving
    # a linear ramp with a symmetric filter gives the mean of each row pair: 8 r + 2.
    ramp = np.repeat((4 * np.arange(64, dtype=np.float32))[:, None], 32, 1)
    img = np.stack([ramp, 255 - ramp, np.full_like(ramp, 7)], -1).astype(np.uint8)
    out = common.resize_center_crop(img, 16).numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    want = 8 * (np.arange(16) + 8) + 2
    np.testing.assert_allclose(out[1:-1, :, 0], np.repeat(want[1:-1, None], 16, 1), atol=1)
    np.testing.assert_allclose(out[..., 2], 7)
    # Wide images crop columns the same way; grey images get three equal channels.
    wide = np.transpose(img, (1, 0, 2))
    np.testing.assert_array_equal(common.resize_center_crop(wide, 16).numpy(),
                                  np.transpose(out, (1, 0, 2)))
    grey = common.resize_center_crop(img[..., :1], 16).numpy()
    np.testing.assert_array_equal(grey, np.repeat(out[..., :1], 3, -1))
    # Smaller than the target: scaled up, still square.
    assert common.resize_center_crop(img[:7, :5], 16).shape == (16, 16, 3)


def test_unset_fields_and_dataset_kinds():
    cfg = ml_collections.ConfigDict(dict(a="", b=(), c=0, d="x", dataset="tfds:cifar10"))
    assert common.field(cfg, "a", "dflt") == "dflt" and common.field(cfg, "b", 5) == 5
    assert common.field(cfg, "c", 5) == 0 and common.field(cfg, "d") == "x"
    assert common.field(cfg, "missing", 3) == 3
    assert common.dataset_kind(cfg, "lp", ("builtin", "tfds")) == ("tfds", "cifar10")
    assert common.dataset_kind(ml_collections.ConfigDict({"dataset": ""}), "lp",
                               ("builtin",)) == ("builtin", "")
    for bad in ("img2dataset:/x/*.tar", "tfds:", "cifar10"):
        with pytest.raises(ValueError, match=r"config.evals.lp.dataset=.*'tfds:NAME'"):
            common.dataset_kind(ml_collections.ConfigDict({"dataset": bad}), "lp",
                                ("builtin", "tfds"))


# --- img2dataset retrieval shards ---

FLICKR_CAPTIONS = [
    "a dog runs on grass\nTwo dogs play.\r\n\n  a brown dog outside  \n",
    "one caption only",
    "first\nsecond\nthird\nfourth\nfifth",
]


def _flickr_shards(tmp_path, fmt):
    write = shard_writers.write_tar if fmt == "tar" else shard_writers.write_tfrecord
    ext = "tar" if fmt == "tar" else "tfrecord"
    write(str(tmp_path / f"00000.{ext}"), [3, 4], image_size=40,
          captions=FLICKR_CAPTIONS[:2], broken=("corrupt_jpeg", "non_utf8", "no_image"))
    write(str(tmp_path / f"00001.{ext}"), [5], image_size=40, captions=FLICKR_CAPTIONS[2:],
          broken=("empty_caption",))
    return str(tmp_path / ("{00000..00001}." + ext))


def test_caption_lines():
    assert retrieval.caption_lines(FLICKR_CAPTIONS[0].encode()) == [
        "a dog runs on grass", "Two dogs play.", "a brown dog outside"]
    assert retrieval.caption_lines(b" \n\n") == []
    with pytest.raises(UnicodeDecodeError):
        retrieval.caption_lines(b"a \xff\xfe b")


@pytest.mark.parametrize("fmt", ["tar", "tfrecord"])
def test_img2dataset_retrieval_set_reads_every_caption_line(tmp_path, fmt, caplog):
    pattern = _flickr_shards(tmp_path, fmt)
    with caplog.at_level("WARNING"):
        d = retrieval.img2dataset_retrieval_set(pattern, 0, 16)
    want = [retrieval.caption_lines(c.encode()) for c in FLICKR_CAPTIONS]
    assert d["texts"] == [c for caps in want for c in caps]
    assert d["text_to_image"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]
    # Images: the written JPEGs, decoded and centre-cropped by the one helper.
    assert d["image"].shape == (3, 16, 16, 3) and d["image"].dtype == np.uint8
    for j, i in enumerate((3, 4, 5)):
        jpg = shard_writers.example(i, 40)[0]
        ref = common.resize_center_crop(tf.io.decode_jpeg(jpg, channels=3), 16).numpy()
        np.testing.assert_array_equal(d["image"][j], ref)
    # The 4 broken records (corrupt JPEG, non-UTF-8, no image, blank caption) are counted.
    assert "skipped 4 broken records" in caplog.text
    # num_images caps in file order.
    capped = retrieval.img2dataset_retrieval_set(pattern, 2, 16)
    assert capped["text_to_image"].tolist() == [0, 0, 0, 1]


def test_img2dataset_pattern_that_matches_nothing_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.evals.ret.dataset='img2dataset:.*"
                                                r"nothing.*matches no file"):
        retrieval.img2dataset_retrieval_set(str(tmp_path / "nothing-*.tar"), 0, 16,
                                            eval_name="ret")


# --- TFDS: data, class names and the error paths (tfds.testing.mock_data: no download) ---


def test_tfds_chunks_and_class_names_with_mock_data():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=7):
        b = common.tfds_builder("zs", "oxford_iiit_pet", "")
        ds = common.tfds_split(b, "zs", "test_split", "test", "")
        chunks = list(common.tfds_image_label_chunks(ds, "zs", "image", "label", 24, 5, 4))
        assert [len(c["label"]) for c in chunks] == [4, 1]
        assert chunks[0]["image"].shape == (4, 24, 24, 3) and chunks[0]["image"].dtype == np.uint8
        assert all(0 <= y < 37 for c in chunks for y in c["label"])
        names = zero_shot.tfds_class_names(b, "zs", "label")
        assert len(names) == 37 and names[1] == "american bulldog"  # underscores -> spaces
        with pytest.raises(KeyError, match=r"config.evals.zs.label_key='breed'.*'species'"):
            common.tfds_class_feature(b, "zs", "breed")
        with pytest.raises(KeyError, match=r"config.evals.zs.image_key='img'.*'image'"):
            list(common.tfds_image_label_chunks(ds, "zs", "img", "label", 24, 5, 4))
        # imagenet2012 names its classes by WordNet id: ask for a classes file.
        inet = common.tfds_builder("zs", "imagenet2012", "")
        with pytest.raises(ValueError, match=r"WordNet id \('n01440764'.*classes_file"):
            zero_shot.tfds_class_names(inet, "zs", "label")


def test_tfds_dataset_not_prepared_fails_naming_field_dataset_and_data_dir(tmp_path):
    b = common.tfds_builder("lp", "cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        common.tfds_split(b, "lp", "train_split", "train[:100]", str(tmp_path))
    msg = str(e.value)
    assert "config.evals.lp.dataset='tfds:cifar10'" in msg and "train_split='train[:100]'" in msg
    assert f"config.evals.lp.data_dir='{tmp_path}'" in msg and "never downloads" in msg
    assert not glob.glob(str(tmp_path / "**" / "*.tfrecord*"), recursive=True)  # no download
    with pytest.raises(FileNotFoundError, match=r"config.evals.lp.dataset='tfds:no_such_ds'"):
        common.tfds_builder("lp", "no_such_ds", str(tmp_path))


# --- results files ---


def test_results_json_is_flat_and_results_md_keeps_the_n_a_reasons(tmp_path):
    results = {"linear_probe/top1": 0.5, "step": 3, "config": "t"}
    report.write_json(str(tmp_path), results)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    with pytest.raises(ValueError, match="not_applicable"):
        report.write_json(str(tmp_path), dict(results, not_applicable={"zero_shot": "why"}))
    evals = {"linear_probe": {}, "zero_shot": {}}
    report.write_markdown(str(tmp_path / "sub"), results, evals,  # makes the directory
                          {"zero_shot": "needs text_embedding"})
    md = (tmp_path / "sub" / "results.md").read_text()
    assert "| 50.0 | n/a |" in md and "- `zero_shot`: n/a, needs text_embedding." in md


# --- every field an evaluator reads can be set on the command line ---

EVAL_MODULES = {"linear_probe": "linear_probe", "zero_shot": "zero_shot",
                "retrieval": "retrieval", "grounding": "grounding", "vqa": "vqa"}


def fields_read(module: str) -> set:
    """Config fields an evaluator module reads: field(cfg, "x"), cfg.get("x"), cfg.x."""
    src = open(os.path.join(REPO, "maeclip_jax", "evaluation", module + ".py")).read()
    keys = set(re.findall(r'(?:field\((?:self\.)?cfg, |cfg\.get\()"(\w+)"', src))
    keys |= set(re.findall(r"\bcfg\.(\w+)\b", src)) - {"get"}
    if "dataset_kind(" in src:
        keys.add("dataset")
    return keys


def test_fields_read_are_found():
    # The scan itself must see what the modules read (else the next test checks nothing).
    assert {"protocol", "shots", "train_split", "num_train_examples", "label_key", "c_grid",
            "num_examples", "dataset"} <= fields_read("linear_probe")
    assert {"class_names", "classes_file", "templates", "templates_file",
            "num_test_examples"} <= fields_read("zero_shot")
    assert {"text_key", "format", "split", "num_images"} <= fields_read("retrieval")
    assert {"layer", "weighting", "threshold"} <= fields_read("grounding")
    assert {"test_file", "image_dir", "head", "freeze_towers"} <= fields_read("vqa")


def _parse(argv):
    from absl import flags
    from ml_collections import config_flags
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                    lock_config=False, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("arg", ["", ":full"])
def test_every_evaluator_field_has_a_typed_default(arg):
    config = _parse(["main", f"--config={REPO}/configs/maeclip_tiny.py{arg}"])
    kinds = set()
    for name, cfg in config.evals.items():
        kind = cfg.get("type", name)
        kinds.add(kind)
        for key in sorted(fields_read(EVAL_MODULES[kind])):
            assert key in cfg, f"config.evals.{name}.{key} is read but has no default"
            assert cfg[key] is not None, f"config.evals.{name}.{key} defaults to None"
    assert kinds == ({"linear_probe", "zero_shot", "retrieval", "grounding"}
                     | ({"vqa"} if arg else set()))


def test_evaluator_fields_parse_from_the_command_line():
    config = _parse([
        "main", f"--config={REPO}/configs/maeclip_tiny.py:full",
        "--config.evals.linear_probe.protocol=logistic",
        "--config.evals.linear_probe.dataset=tfds:imagenet2012",
        "--config.evals.linear_probe.train_split=train[:10000]",
        "--config.evals.linear_probe.num_test_examples=500",
        "--config.evals.linear_probe.c_grid=(0.1,1.0)",
        "--config.evals.zero_shot.classes_file=gs://bucket/imagenet_classes.txt",
        "--config.evals.zero_shot.templates=('a photo of a {}.','a {}')",
        "--config.evals.retrieval.dataset=img2dataset:/data/flickr30k/{00000..00001}.tar",
        "--config.evals.retrieval.num_images=0",
        "--config.evals.grounding.layer=image_encoder/encoder/block2",
        "--config.evals.vqa.freeze_towers=True",
        "--config.evals.vqa.head.width=64",
        "--config.evals.linear_probe_logistic.data_dir=/tfds"])
    e = config.evals
    assert e.linear_probe.protocol == "logistic" and e.linear_probe.c_grid == (0.1, 1.0)
    assert e.linear_probe.dataset == "tfds:imagenet2012"
    assert e.linear_probe.train_split == "train[:10000]" and e.linear_probe.num_test_examples == 500
    assert e.zero_shot.classes_file.startswith("gs://")
    assert e.zero_shot.templates == ("a photo of a {}.", "a {}")
    assert e.retrieval.dataset.endswith("{00000..00001}.tar") and e.retrieval.num_images == 0
    assert e.grounding.layer == "image_encoder/encoder/block2"
    assert e.vqa.freeze_towers is True and e.vqa.head.width == 64
    assert e.linear_probe_logistic.data_dir == "/tfds"
