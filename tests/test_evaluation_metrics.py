"""The evaluation suite's numerical parts against hand-computed cases and independent
references (numpy formulas, scikit-learn)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maeclip_jax.evaluation import grounding, linear_probe, retrieval, vqa, vqa_formats, zero_shot


# --- retrieval ---

def test_recall_at_k_on_a_hand_built_similarity_matrix():
    # 3 images, 2 captions each: captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    t2i = np.array([0, 0, 1, 1, 2, 2])
    sim = np.array([
        # c0   c1   c2   c3   c4   c5
        [0.9, 0.1, 0.8, 0.0, 0.0, 0.0],   # image 0: a correct caption ranks first
        [0.7, 0.6, 0.2, 0.5, 0.0, 0.0],   # image 1: best correct (c3, 0.5) has 2 wrong above
        [0.0, 0.0, 0.9, 0.0, 0.3, 0.8],   # image 2: best correct (c5, 0.8) has 1 wrong above
    ])
    r = retrieval.recall_at_k(sim, t2i, ks=(1, 2, 3))
    assert r["i2t_r@1"] == pytest.approx(1 / 3)
    assert r["i2t_r@2"] == pytest.approx(2 / 3)
    assert r["i2t_r@3"] == pytest.approx(1.0)
    # Text -> image ranks (wrong images scoring >= the right one), by column:
    # c0: 0 | c1: image1 0.6 > 0.1 -> 1 | c2: image0 0.8, image2 0.9 > 0.2 -> 2 | c3: 0
    # c4: 0 | c5: 0
    assert r["t2i_r@1"] == pytest.approx(4 / 6)
    assert r["t2i_r@2"] == pytest.approx(5 / 6)
    assert r["t2i_r@3"] == pytest.approx(1.0)


def test_recall_ties_count_against_the_model():
    sim = np.zeros((4, 4))  # a constant model
    r = retrieval.recall_at_k(sim, np.arange(4), ks=(1, 4))
    assert r["i2t_r@1"] == 0.0 and r["t2i_r@1"] == 0.0
    assert r["i2t_r@4"] == 1.0


def test_scene_captions_are_distinct_and_true():
    from maeclip_jax.evaluation import common
    scene = common.builtin_scenes(0, 8, 32)
    rng = np.random.default_rng(0)
    for i in range(8):
        caps = retrieval.scene_captions(scene, i, 5, 32, rng)
        assert len(caps) == 5 and caps[0] == scene["text"][i].decode()
        from maeclip_jax.data import builtin
        for c in caps:  # every object's colour and shape are named in every caption
            for k in range(scene["num_objects"][i]):
                assert builtin.COLOUR_NAMES[scene["colour"][i, k]] in c
                assert builtin.SHAPES[scene["shape"][i, k]] in c


# --- linear probes ---

def _blobs(n, d=12, c=5, seed=0, spread=1.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d))
    y = rng.integers(c, size=n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


def test_logistic_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs(900)
    tr_x, tr_y, te_x, te_y = x[:600], y[:600], x[600:], y[600:]
    res = linear_probe.logistic_probe(tr_x, tr_y, te_x, te_y, 5)
    assert 0.3 < res["top1"] < 0.98  # neither trivial nor hopeless: the comparison means something
    mu, sd = tr_x.mean(0), tr_x.std(0) + 1e-6
    for c in (res["C"], 0.01, 1.0):
        ours_w, ours_b = linear_probe.fit_logistic((tr_x - mu) / sd, tr_y, 5, c)
        ours = np.argmax((te_x - mu) / sd @ ours_w + ours_b, 1)
        sk = LogisticRegression(C=c, max_iter=2000, tol=1e-8).fit((tr_x - mu) / sd, tr_y)
        sk_pred = sk.predict((te_x - mu) / sd)
        assert abs(np.mean(ours == te_y) - np.mean(sk_pred == te_y)) <= 0.01
        np.testing.assert_allclose(ours_w, sk.coef_.T, atol=2e-3 * max(1, np.abs(sk.coef_).max()))
    if res["C"] is not None:
        sk = LogisticRegression(C=res["C"], max_iter=2000, tol=1e-8).fit((tr_x - mu) / sd, tr_y)
        assert abs(res["top1"] - sk.score((te_x - mu) / sd, te_y)) <= 0.01


def test_ridge_probe_few_shot_keeps_k_per_class():
    y = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1])
    keep = linear_probe.few_shot_indices(y, 2)
    assert sorted(np.bincount(y[keep]).tolist()) == [2, 2, 2]
    np.testing.assert_array_equal(keep, [0, 1, 2, 3, 4, 6])


# --- zero-shot ---

def test_zero_shot_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    c, t, d = 6, 3, 16
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:c]  # orthonormal class directions
    # Each template embedding = class direction + template-specific noise.
    txt = np.stack([basis[i] + 0.3 * rng.normal(size=d) for i in range(c) for _ in range(t)])
    cls = zero_shot.class_embeddings(txt, c, t)
    np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, rtol=1e-6)
    labels = rng.integers(c, size=50)
    img = basis[labels] + 0.05 * rng.normal(size=(50, d))
    logits = img @ cls.T
    assert zero_shot.topk_accuracy(logits, labels, 1) == 1.0
    # Shift the labels by one class: top-1 drops to 0 while top-c stays 1.
    wrong = (labels + 1) % c
    assert zero_shot.topk_accuracy(logits, wrong, 1) == 0.0
    assert zero_shot.topk_accuracy(logits, wrong, c) == 1.0


def test_class_names_and_templates_from_files(tmp_path):
    import ml_collections
    (tmp_path / "c.json").write_text(json.dumps({"class_names": ["x", "y"],
                                                 "templates": ["a {}", "the {}"]}))
    (tmp_path / "t.txt").write_text("a photo of {}\n\nthere is {}\n")
    cfg = ml_collections.ConfigDict({"classes_file": str(tmp_path / "c.json"),
                                     "templates_file": str(tmp_path / "t.txt")})
    names, temps = zero_shot.class_names_and_templates(cfg, "zs", ["d"])
    assert names == ["x", "y"] and temps == ["a photo of {}", "there is {}"]
    bad = ml_collections.ConfigDict({"templates": ["no placeholder"]})
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot.class_names_and_templates(bad, "zs", ["d"])


# --- grounding ---

class OnePatchModel(nn.Module):
    """Score reads patch `k` only: 16 patches of 8x8x3, block0 = linear map (no bias),
    embedding = P a_k."""
    k: int

    def setup(self):
        self.block0 = nn.Dense(8, use_bias=False)
        self.proj = nn.Dense(4, use_bias=False)

    def encode_image(self, images):
        b = images.shape[0]
        patches = images.reshape(b, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 16, 192)
        a = self.block0(patches)
        return {"tokens": a, "pooled": a[:, self.k], "embedding": self.proj(a[:, self.k])}


def _patch(x, k, value):
    r, c = divmod(k, 4)
    return x.at[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].set(value)


@pytest.mark.parametrize("k,distractor", [(0, 5), (9, 2), (14, 15)])
def test_gradcam_peaks_at_the_patch_that_decides_the_score(k, distractor):
    model = OnePatchModel(k)
    x = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
    obj = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 3))
    x = _patch(x, k, obj)
    # A brighter patch the score never reads: an activation-only map would peak there.
    x = _patch(x, distractor, -3.0 * obj)
    params = model.init(jax.random.PRNGKey(0), x, method="encode_image")["params"]
    enc = model.apply({"params": params}, x, method="encode_image")
    a, text = enc["tokens"], enc["embedding"]  # prompt embedding along +P a_k
    assert np.all(np.argmax(np.linalg.norm(a, axis=-1), 1) == distractor)
    assert grounding.last_block(model, params, x) == ("block0",)
    for weighting in ("channel", "token"):
        cam, _ = grounding.gradcam(model, params, x, text, ("block0",), a.shape, weighting)
        assert np.all(np.argmax(np.asarray(cam), 1) == k), weighting
    # Token weighting: the gradient is zero off patch k, so is the map.
    assert np.all(np.asarray(cam)[:, np.arange(16) != k] == 0)
    # Channel weighting against the analytic gradient: ds/da_k = P^T text, others 0.
    cam_c, _ = grounding.gradcam(model, params, x, text, ("block0",), a.shape, "channel")
    g = np.einsum("wd,bd->bw", np.asarray(params["proj"]["kernel"]), np.asarray(text)) / 16
    np.testing.assert_allclose(cam_c, np.maximum(np.einsum("btw,bw->bt", a, g), 0), atol=1e-5)


def test_pointing_game_and_iou_on_hand_made_masks():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 0:2, 0:2] = True            # object in the top-left 4x4 patch (grid 2x2)
    masks[1, 5:8, 6:8] = True            # object in the bottom-right patch
    maps = np.array([[[5., 1.], [2., 0.]],   # peak top-left: hit
                     [[5., 1.], [2., 3.]]])  # peak top-left: miss; 2nd highest bottom-right
    assert grounding.pointing_hits(maps, masks, 1).tolist() == [True, False]
    assert grounding.pointing_hits(maps, masks, 2).tolist() == [True, True]
    np.testing.assert_allclose(grounding.pointing_chance(masks, 2, 2, 1), [0.25, 0.25])
    np.testing.assert_allclose(grounding.pointing_chance(masks, 2, 2, 2), [0.5, 0.5])
    pred = np.zeros((2, 8, 8), bool)
    pred[0, 0:2, 0:4] = True             # 4 of 8 predicted pixels right, union 8
    pred[1, 0:1, 0:1] = True             # disjoint: IoU 0
    np.testing.assert_allclose(grounding.iou(pred, masks), [0.5, 0.0])
    seg = grounding.threshold_maps(np.array([[[0., 1.], [3., 4.]]]), 0.5)
    assert seg.tolist() == [[[False, False], [True, True]]]
    assert grounding.upsample(seg, 4, 4)[0].sum() == 8


def _cell_mask(*cells):
    """`bool [1, 8, 8]` holding the 4x4 patches `cells` of a 2x2 grid (0 1 / 2 3)."""
    m = np.zeros((1, 8, 8), bool)
    for c in cells:
        m[0, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] = True
    return m


@pytest.mark.parametrize("scores,cells,k,expected", [
    # A flat (all-zero, as after GradCAM's ReLU) map: every cell tied, so chance exactly.
    ([0, 0, 0, 0], [3], 1, 1 / 4),
    ([0, 0, 0, 0], [3], 2, 1 - 3 / 6),            # 1 - C(3,2) / C(4,2)
    # A peak off the object, the rest tied at zero (position used to pick cells 1, 2 first).
    ([5, 0, 0, 0], [3], 1, 0.0),
    ([5, 0, 0, 0], [3], 2, 1 / 3),                # 1 free place among 3 tied, 1 of them a hit
    ([5, 0, 0, 0], [3], 3, 1 - 1 / 3),            # 2 places among 3: 1 - C(2,2) / C(3,2)
    ([5, 0, 0, 0], [0], 1, 1.0),                  # the peak is on the object
    # Three cells tied at the top, the object on two cells (one of them tied).
    ([3, 3, 3, 1], [1, 3], 1, 1 / 3),
    ([3, 3, 3, 1], [1, 3], 2, 1 - 1 / 3),         # 2 of 3 tied cells, 1 hit: 1 - C(2,2)/C(3,2)
    ([3, 3, 3, 1], [3], 3, 0.0),                  # the three tied cells fill all 3 places
    # Values within 1e-5 of the map's range are ties (device-layout noise can't order them).
    ([1.0, 1.0 + 1e-9, 0, 0], [0], 1, 1 / 2),
    ([1.0, 1.0 + 1e-3, 0, 0], [0], 1, 0.0),
])
def test_pointing_game_counts_ties_as_a_uniform_random_pick(scores, cells, k, expected):
    maps = np.array(scores, np.float64).reshape(1, 2, 2)
    got = grounding.pointing_hits(maps, _cell_mask(*cells), k)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, abs=1e-12)


def test_pointing_game_of_a_flat_map_is_the_chance_level_and_ties_are_exact():
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 16, 16), bool)
    for q in range(40):  # random rectangles on a 4x4 grid of 4x4 patches
        y, x = rng.integers(0, 12, size=2)
        masks[q, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
    for k in (1, 5):
        np.testing.assert_allclose(grounding.pointing_hits(np.zeros((40, 4, 4)), masks, k),
                                   grounding.pointing_chance(masks, 4, 4, k), atol=1e-12)
    # Monte Carlo reference: random orderings of maps with many exact ties (values 0..2).
    maps = rng.integers(0, 3, size=(40, 4, 4)).astype(float)
    cells = grounding.patch_coverage(masks, 4, 4) > 0
    flat = maps.reshape(40, -1)
    draws = []
    for _ in range(4000):
        key = flat + 0.1 * rng.uniform(size=flat.shape)   # random tie-break, order kept
        top = np.argsort(-key, axis=1)[:, :5]
        draws.append(np.take_along_axis(cells, top, 1).any(1))
    mc = np.mean(draws, axis=0)
    # 4000 draws: sd <= 0.008 per query; 5 sd.
    np.testing.assert_allclose(grounding.pointing_hits(maps, masks, 5), mc, atol=0.04)


def test_shuffled_pointing_chance_scores_maps_against_other_images_objects():
    peaks, objects, image = [0, 0, 1, 2], [0, 1, 1, 3], np.array([0, 1, 2, 2])
    maps = np.zeros((4, 2, 2))
    for q, c in enumerate(peaks):
        maps[q].flat[c] = 1.0
    masks = np.concatenate([_cell_mask(c) for c in objects])
    assert grounding.pointing_hits(maps, masks, 1).tolist() == [1.0, 0.0, 1.0, 0.0]
    # By hand over the 10 pairs on different images (queries 2 and 3 share image 2): query 1's
    # peak (cell 0) hits query 0's object, query 2's peak (cell 1) hits query 1's: 2 / 10.
    assert grounding.pointing_shuffled(maps, masks, image, 1, num_shifts=3) == pytest.approx(0.2)
    # k = 4 takes every cell: every pair hits.
    assert grounding.pointing_shuffled(maps, masks, image, 4, num_shifts=3) == 1.0


# --- VQA data ---

def test_generated_questions_match_the_scenes():
    from maeclip_jax.data import builtin
    from maeclip_jax.evaluation import common
    scene = common.builtin_scenes(0, 40, 32, offset=2)
    qs = vqa.generate_questions(scene, 0, per_image=5)
    assert {q["type"] for q in qs} == set(vqa.QUESTION_TYPES)
    for q in qs:
        i, n = q["image"], scene["num_objects"][q["image"]]
        objs = {(builtin.COLOUR_NAMES[c], builtin.SHAPES[s])
                for c, s in zip(scene["colour"][i, :n], scene["shape"][i, :n])}
        if q["type"] == "count":
            assert q["answer"] == ["one", "two", "three"][n - 1]
        elif q["type"] == "existence":
            c, s = q["question"].split()[-2:]
            assert q["answer"] == ("yes" if (c, s) in objs else "no")
        elif q["type"] == "colour":
            s = q["question"].split()[-1]
            assert [o for o in objs if o[1] == s] == [(q["answer"], s)]
        elif q["type"] == "shape":
            c = q["question"].split()[-2]
            assert [o for o in objs if o[0] == c] == [(c, q["answer"])]


def test_converters_from_official_question_files(tmp_path):
    (tmp_path / "clevr.json").write_text(json.dumps({"info": {}, "questions": [
        {"image_filename": "CLEVR_val_000000.png", "question": "How many cubes?", "answer": 3,
         "question_index": 7, "program": [{"function": "scene"}, {"function": "count"}]}]}))
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What colour?", "question_id": 420}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "red",
         "answer_type": "other", "answers": [{"answer": "red"}, {"answer": "dark red"}]}]}))
    (tmp_path / "gqa.json").write_text(json.dumps({"201": {
        "imageId": "n123", "question": "Is it left?", "answer": "no",
        "types": {"structural": "verify"}}}))
    vqa_formats.main(["--format=clevr", f"--questions={tmp_path}/clevr.json",
                      f"--out={tmp_path}/c.jsonl"])
    assert vqa.read_jsonl(str(tmp_path / "c.jsonl")) == [
        {"question_id": 7, "image": "CLEVR_val_000000.png", "question": "How many cubes?",
         "answer": "3", "type": "count"}]
    assert vqa_formats.from_vqav2(str(tmp_path / "q.json"), str(tmp_path / "a.json")) == [
        {"question_id": 420, "image": "COCO_val2014_000000000042.jpg", "question": "What colour?",
         "answer": "red", "type": "other", "answers": ["red", "dark red"]}]
    assert vqa_formats.from_gqa(str(tmp_path / "gqa.json")) == [
        {"question_id": "201", "image": "n123.jpg", "question": "Is it left?", "answer": "no",
         "type": "verify"}]
    (tmp_path / "bad.json").write_text(json.dumps({"1": {"question": "?"}}))
    with pytest.raises(ValueError, match=r"bad.json question 1.*'imageId'"):
        vqa_formats.from_gqa(str(tmp_path / "bad.json"))


def test_grounding_pictures_prefer_crowded_scenes_from_different_groups():
    # Queries 0-3: single objects of one hard-negative group (scenes 0-3); 4-6: scene 4 (two
    # objects) and scene 5 (one, same group as 4); 7-9: scene 8 (three objects).
    index = np.array([0, 1, 2, 3, 4, 4, 5, 8, 8, 8])
    num_objects = np.array([1, 1, 1, 1, 2, 1, 1, 1, 3])
    assert grounding.picture_queries(index, num_objects, 3) == [7, 4, 0]
    # With more pictures than groups, the rest follow in the same order.
    assert grounding.picture_queries(index, num_objects, 5) == [7, 8, 9, 4, 0]
    assert grounding.picture_queries(index, num_objects, 0) == []
