"""The tokenizer command trains a sentencepiece model from shards; the pipeline then tokenises
with it in tf.data (tensorflow-text), matching the sentencepiece library on the pinned
normalisation and the shared id layout (0 pad, 1 EOT, 2 unknown)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import shard_writers as sw
from conftest import REPO, tiny_config
from maeclip_jax import train
from maeclip_jax.data import pipeline, tokenizer


def _reference_normalise(text: str) -> str:  # the documented rule, written independently
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    caps = sw.write_tar(str(d / "a.tar"), range(0, 150), ["non_utf8", "empty_caption"])
    caps += sw.write_tfrecord(str(d / "b.tfrecord"), range(150, 200))
    out = str(d / "tok" / "sp")
    p = subprocess.run(
        [sys.executable, "-m", "maeclip_jax.tools.train_tokenizer",
         f"--input={d}/a.tar;{d}/b.tfrecord", f"--output={out}", "--vocab_size=64"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert p.returncode == 0, p.stderr[-2000:]
    # 150 + 50 good captions; the non-UTF-8 and the blank one are dropped.
    assert "read 200 captions" in p.stdout
    return d, out + ".model", caps


def test_pipeline_tokenises_like_the_sentencepiece_library(trained):
    import sentencepiece as spm
    d, model, caps = trained
    tok = tokenizer.get_tokenizer("sentencepiece", 16, model_path=model)
    sp = spm.SentencePieceProcessor(model_file=model)
    assert tok.vocab_size == sp.get_piece_size()
    texts = caps[:20] + ["A Large RED circle!!", ""]
    got = tok.tokenize_numpy(texts)
    for text, row in zip(texts, got):
        ids = sp.encode(_reference_normalise(text))[:15] + [tokenizer.EOT_ID]
        np.testing.assert_array_equal(row, ids + [tokenizer.PAD_ID] * (16 - len(ids)))
        assert tokenizer.UNK_ID not in row  # the training captions' vocabulary is covered


def test_training_batches_use_the_trained_model(trained):
    d, model, caps = trained
    config = tiny_config(**{"input.source": "img2dataset", "input.data": str(d / "a.tar"),
                            "input.tokenizer": "sentencepiece", "input.tokenizer_model": model,
                            "input.shuffle_buffer": 0})
    tok = tokenizer.from_config(config.input)
    assert train.prepare_config(config, tok).model.text.vocab_size == tok.vocab_size
    batch = next(iter(pipeline.train_dataset(config, tok, 0)))
    text = batch["text"].numpy()
    assert text.shape == (16, 12) and text.max() < tok.vocab_size
    assert (np.sum(text == tokenizer.EOT_ID, axis=1) == 1).all()
    assert (text[:, 0] > tokenizer.UNK_ID).all()  # real pieces, no empty caption


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizer.get_tokenizer("sentencepiece", 8, model_path=str(tmp_path / "nope.model"))
