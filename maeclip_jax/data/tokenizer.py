"""Tokenizers run inside tf.data, with ONE pinned text normalisation shared by training and
every evaluator.

Normalisation (`normalize_text`): lower-case; every character outside [a-z0-9] becomes a space;
runs of spaces collapse; leading/trailing spaces go. Token ids: 0 = padding, 1 = end-of-text,
2 = unknown word (sentencepiece models trained by `python -m maeclip_jax.tools.train_tokenizer`
use the same three ids: pad_id=0, eos_id=1, unk_id=2, no BOS); a sequence is the caption's tokens, truncated to max_len - 1, then one
end-of-text token, then padding up to max_len. The text tower pools at that end-of-text token.
"""
from typing import Callable, Dict, List, Sequence

import numpy as np
import tensorflow as tf

PAD_ID, EOT_ID, UNK_ID = 0, 1, 2


def normalize_text(texts: tf.Tensor) -> tf.Tensor:
    """The pinned text normalisation, on a string tensor of any shape."""
    t = tf.strings.lower(texts)
    t = tf.strings.regex_replace(t, r"[^a-z0-9]+", " ")
    return tf.strings.strip(t)


def pad_with_eot(ids: tf.RaggedTensor, max_len: int) -> tf.Tensor:
    """Ragged `[B, (n)]` ids -> `[B, max_len]` int32: truncate to max_len-1, append EOT, pad."""
    ids = ids[:, : max_len - 1]
    eot = tf.fill([ids.nrows(), 1], tf.constant(EOT_ID, ids.dtype))
    ids = tf.concat([ids, tf.RaggedTensor.from_tensor(eot)], axis=1)
    return tf.cast(ids.to_tensor(default_value=PAD_ID, shape=[None, max_len]), tf.int32)


class Tokenizer:
    """Interface: `tokenize(string tensor [B] or []) -> int32 [B, max_len] or [max_len]`."""

    vocab_size: int
    max_len: int

    def tokenize_batch(self, texts: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def tokenize(self, texts: tf.Tensor) -> tf.Tensor:
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            return self.tokenize_batch(texts[None])[0]
        return self.tokenize_batch(texts)

    def tokenize_numpy(self, texts: Sequence[str]) -> np.ndarray:
        """Eager version for evaluators: list of strings -> `int32 [len, max_len]`."""
        return self.tokenize(tf.constant(list(texts), tf.string)).numpy()


class WordTokenizer(Tokenizer):
    """Whitespace word-level tokenizer over a fixed vocabulary (the built-in dataset's)."""

    def __init__(self, words: List[str], max_len: int):
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer vocabulary has duplicate words")
        self.words = list(words)
        self.max_len = max_len
        self.vocab_size = len(words) + 3
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.words), tf.constant(np.arange(3, self.vocab_size), tf.int64))
        self._table = tf.lookup.StaticHashTable(init, default_value=UNK_ID)

    def tokenize_batch(self, texts: tf.Tensor) -> tf.Tensor:
        words = tf.strings.split(normalize_text(texts))
        return pad_with_eot(tf.ragged.map_flat_values(self._table.lookup, words), self.max_len)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece subword model run inside tf.data through tensorflow-text.

    The text is first put through the pinned `normalize_text` (the model is trained on text
    normalised the same way), then split into pieces; ids 0/1/2 are pad/EOT/unknown as above.
    """

    def __init__(self, model_path: str, max_len: int):
        import tensorflow_text as tf_text  # registers the sentencepiece ops
        if not model_path:
            raise ValueError("config.input.tokenizer='sentencepiece' needs "
                             "config.input.tokenizer_model (a .model file written by "
                             "python -m maeclip_jax.tools.train_tokenizer)")
        if not tf.io.gfile.exists(model_path):
            raise FileNotFoundError(f"config.input.tokenizer_model={model_path!r}: no such file")
        with tf.io.gfile.GFile(model_path, "rb") as f:
            proto = f.read()
        self._sp = tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)
        self.vocab_size = int(self._sp.vocab_size())
        self.max_len = max_len
        ids = [int(self._sp.string_to_id(p)) for p in ("<pad>", "</s>", "<unk>")]
        if ids != [PAD_ID, EOT_ID, UNK_ID]:
            raise ValueError(f"sentencepiece model {model_path}: <pad>, </s>, <unk> have ids {ids}; "
                             f"expected {[PAD_ID, EOT_ID, UNK_ID]} (train it with "
                             "python -m maeclip_jax.tools.train_tokenizer)")

    def tokenize_batch(self, texts: tf.Tensor) -> tf.Tensor:
        return pad_with_eot(self._sp.tokenize(normalize_text(texts)), self.max_len)


_FACTORIES: Dict[str, Callable[..., Tokenizer]] = {}


def register(name: str):
    def wrap(fn):
        _FACTORIES[name] = fn
        return fn
    return wrap


@register("builtin_words")
def _builtin_words(max_len: int, **unused) -> Tokenizer:
    from maeclip_jax.data import builtin
    return WordTokenizer(builtin.VOCAB_WORDS, max_len)


@register("sentencepiece")
def _sentencepiece(max_len: int, model_path: str = "", **unused) -> Tokenizer:
    return SentencePieceTokenizer(model_path, max_len)


def from_config(input_cfg) -> Tokenizer:
    """The tokenizer `config.input` asks for (name, max_text_len, tokenizer_model)."""
    return get_tokenizer(input_cfg.tokenizer, input_cfg.max_text_len,
                         model_path=input_cfg.get("tokenizer_model", ""))


def get_tokenizer(name: str, max_len: int, **kwargs) -> Tokenizer:
    """Tokenizer by registry name (`config.input.tokenizer`)."""
    if name not in _FACTORIES:
        raise ValueError(f"config.input.tokenizer={name!r} is not known; known: {sorted(_FACTORIES)}")
    return _FACTORIES[name](max_len=max_len, **kwargs)
