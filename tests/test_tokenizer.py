import numpy as np

from maeclip_jax.data import builtin, tokenizer


def test_normalisation_and_layout():
    tok = tokenizer.get_tokenizer("builtin_words", 8)
    ids = tok.tokenize_numpy(["A Large RED circle!!", "  red   circle  "])
    words = builtin.VOCAB_WORDS
    expect = [3 + words.index(w) for w in ("a", "large", "red", "circle")]
    np.testing.assert_array_equal(ids[0], expect + [tokenizer.EOT_ID, 0, 0, 0])
    np.testing.assert_array_equal(ids[1][:3], [3 + words.index("red"), 3 + words.index("circle"),
                                              tokenizer.EOT_ID])


def test_truncation_keeps_an_end_of_text_token_and_unknown_words_map_to_unk():
    tok = tokenizer.get_tokenizer("builtin_words", 4)
    ids = tok.tokenize_numpy(["a red zebra circle square", ""])
    assert ids[0].tolist()[2] == tokenizer.UNK_ID
    assert ids[0].tolist()[3] == tokenizer.EOT_ID
    assert ids[1].tolist() == [tokenizer.EOT_ID, 0, 0, 0]


def test_every_caption_word_is_in_the_vocabulary():
    tok = tokenizer.get_tokenizer("builtin_words", 40)
    caps = [builtin.generate_scene(0, "train", i)["caption"] for i in range(50)]
    assert (tok.tokenize_numpy(caps) != tokenizer.UNK_ID).all()
