import numpy as np

from maeclip_jax.data import builtin


def test_examples_are_deterministic_and_distinct():
    a = builtin.generate_scene(3, "train", 17)
    b = builtin.generate_scene(3, "train", 17)
    c = builtin.generate_scene(3, "train", 18)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    assert not np.array_equal(a["image"], c["image"])


def test_caption_names_every_object_and_masks_match_attributes():
    for i in range(40):
        ex = builtin.generate_scene(0, "train", i)
        n = int(ex["num_objects"])
        assert 1 <= n <= 3
        for k in range(n):
            words = (f"{builtin.SIZE_NAMES[ex['size'][k]]} {builtin.COLOUR_NAMES[ex['colour'][k]]} "
                     f"{builtin.SHAPES[ex['shape'][k]]}")
            assert words in ex["caption"], (words, ex["caption"])
            m = ex["masks"][k]
            assert m.sum() > 10
            # Inside the mask the pixels carry the object's colour (within the jitter).
            mean_rgb = ex["image"][m].mean(0)
            ref = np.array(builtin.COLOURS[builtin.COLOUR_NAMES[ex["colour"][k]]])
            assert np.abs(mean_rgb - ref).max() <= 21
        assert not ex["masks"][n:].any()
        assert (ex["colour"][n:] == -1).all()
        # Objects never overlap, so each pixel belongs to at most one mask.
        assert ex["masks"].sum(0).max() <= 1


def test_eval_split_is_single_object_labelled_and_disjoint_from_train():
    seen = set()
    for i in range(30):
        ex = builtin.generate_scene(0, "eval", i)
        assert ex["num_objects"] == 1
        assert ex["label"] == ex["colour"][0] * len(builtin.SHAPES) + ex["shape"][0]
        assert builtin.CLASS_NAMES[ex["label"]] in ex["caption"]
        seen.add(ex["image"].tobytes())
    train = {builtin.generate_scene(0, "train", i)["image"].tobytes() for i in range(30)}
    assert not seen & train
    assert builtin.NUM_CLASSES >= 24 and len(builtin.COLOURS) >= 6 and len(builtin.SHAPES) >= 4


def test_tf_data_stream_matches_the_generator_and_strides():
    ds = builtin.dataset(5, "train", 32, start=3, stride=2).take(3)
    got = list(ds.as_numpy_iterator())
    for j, ex in enumerate(got):
        ref = builtin.generate_scene(5, "train", 3 + 2 * j, 32)
        np.testing.assert_array_equal(ex["image"], ref["image"])
        assert ex["text"].decode() == ref["caption"]
        assert ex["masks"].shape == (3, 32, 32)


def test_groups_share_layout_and_differ_only_in_shape():
    g = builtin.HARD_NEGATIVE_GROUP
    members = [builtin.generate_scene(0, "train", 8 * g + j) for j in range(g)]
    n = int(members[0]["num_objects"])
    for ex in members:
        assert int(ex["num_objects"]) == n
        np.testing.assert_array_equal(ex["colour"], members[0]["colour"])
        np.testing.assert_array_equal(ex["size"], members[0]["size"])
    for k in range(n):  # every object has a different shape in every member
        assert len({int(ex["shape"][k]) for ex in members}) == g
    nxt = builtin.generate_scene(0, "train", 9 * g)
    assert nxt["caption"] != members[0]["caption"]
