r"""Trains the sentencepiece model that `config.input.tokenizer='sentencepiece'` uses.

Command (captions from img2dataset shards, .tar or .tfrecord, or from text files with one
caption a line; local or gs://):
  python -m maeclip_jax.tools.train_tokenizer --input='/data/cc12m/{00000..00099}.tar' \
      --output=/data/tokenizers/cc12m_32k --vocab_size=32000

It prints how many captions it read and writes OUTPUT.model and OUTPUT.vocab. Captions are put
through the pinned maeclip_jax.data.tokenizer.normalize_text first (the same normalisation the
pipeline applies before tokenising), and the model reserves ids 0 = <pad>, 1 = </s> (end of
text), 2 = <unk>, with no BOS, matching the layout every tokenizer here shares. Then train with
  --config.input.tokenizer=sentencepiece --config.input.tokenizer_model=OUTPUT.model
"""
import os
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("input", None, "Glob / brace patterns (';'-separated) of .tar, .tfrecord "
                    "or .txt caption files.")
flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab.")
flags.DEFINE_integer("vocab_size", 32000, "Number of ids, including pad, EOT and unknown.")
flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "sentencepiece model type.")
flags.DEFINE_integer("max_captions", 2_000_000, "Read at most this many captions.")


def read_captions(patterns: str, max_captions: int) -> Iterator[str]:
    """Normalised, non-empty captions from shards or text files, in file order."""
    import tensorflow as tf
    from maeclip_jax.data import shards
    from maeclip_jax.data.tokenizer import normalize_text

    files = shards.list_files(patterns)
    txt_files = [f for f in files if f.endswith(".txt")]
    shard_files = [f for f in files if not f.endswith(".txt")]
    datasets = []
    if txt_files:
        datasets.append(tf.data.TextLineDataset(txt_files))
    if shard_files:
        by_fmt = {}
        for f in shard_files:
            by_fmt.setdefault(shards.shard_format(f), []).append(f)
        for fmt, fs in sorted(by_fmt.items()):
            ds = tf.data.Dataset.from_tensor_slices(fs).flat_map(shards.READERS[fmt])
            if shards.PARSERS[fmt] is not None:
                ds = ds.map(shards.PARSERS[fmt])
            datasets.append(ds.map(lambda r: r["txt"]).ignore_errors())
    ds = datasets[0]
    for d in datasets[1:]:
        ds = ds.concatenate(d)
    # Non-UTF-8 captions are dropped here as in training (see pipeline.valid_text).
    ds = ds.filter(lambda t: tf.equal(tf.strings.unicode_transcode(
        t, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD), t))
    ds = ds.batch(1024).map(normalize_text).unbatch().filter(lambda t: tf.strings.length(t) > 0)
    for text in ds.take(max_captions).as_numpy_iterator():
        yield text.decode("utf-8")


def train(patterns: str, output: str, vocab_size: int, model_type: str = "unigram",
          max_captions: int = 2_000_000) -> int:
    """Trains and writes OUTPUT.model / OUTPUT.vocab; returns the number of captions read."""
    import sentencepiece as spm
    import tensorflow as tf

    captions = list(read_captions(patterns, max_captions))
    if not captions:
        raise ValueError(f"--input={patterns!r}: no non-empty caption found")
    parent = os.path.dirname(output)
    if parent:
        tf.io.gfile.makedirs(parent)
    local = output if "://" not in output else os.path.join("/tmp", os.path.basename(output))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_prefix=local, vocab_size=vocab_size,
        model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        normalization_rule_name="identity",  # normalize_text already ran
        character_coverage=1.0, hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
        minloglevel=2)
    if local != output:
        for ext in (".model", ".vocab"):
            tf.io.gfile.copy(local + ext, output + ext, overwrite=True)
    return len(captions)


def main(argv):
    del argv
    f = flags.FLAGS
    if not f.input or not f.output:
        raise app.UsageError("--input and --output are required")
    n = train(f.input, f.output, f.vocab_size, f.model_type, f.max_captions)
    logging.info("trained on %d captions", n)
    print(f"read {n} captions; wrote {f.output}.model and {f.output}.vocab", flush=True)


if __name__ == "__main__":
    app.run(main)
