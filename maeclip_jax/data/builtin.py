"""The built-in dataset: synthetic scenes of coloured shapes with natural captions.

Every example is a pure function of (seed, split, index), drawn in numpy inside tf.data, so the
stream needs no files, never repeats an image, and can restart at any index (exact resume).

Training examples hold 1-3 non-overlapping objects on a textured background and a caption that
names each object's size, colour, shape and position ("a large red circle at the top left and a
small blue square below it"), plus per-object masks and attribute labels for the grounding and
VQA evaluators. The evaluation split holds single-object images labelled colour x shape.
"""
from typing import Dict, List

import numpy as np
import tensorflow as tf

COLOURS: Dict[str, tuple] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 210, 220),
}
SHAPES: List[str] = ["circle", "square", "triangle", "cross"]
SIZES: Dict[str, tuple] = {"small": (0.11, 0.15), "large": (0.19, 0.25)}  # radius / image size

COLOUR_NAMES = list(COLOURS)
SIZE_NAMES = list(SIZES)
MAX_OBJECTS = 3
# P(1, 2, 3 objects) in training scenes. Single objects dominate so that, within a batch,
# captions that share colours must be told apart by shape: with many multi-object scenes the
# contrastive task is solved by colour and position alone and shape is never learned.
OBJECT_COUNT_PROBS = (0.5, 0.3, 0.2)
# Training scenes come in groups of consecutive indices that share everything (layout, colours,
# sizes, background, caption wording) but the shapes, which differ in every member. Groups land
# in the same batch, so every batch holds hard negatives that only shape tells apart; without
# them the contrastive task is solved by colour, size and position, and shape is never learned.
HARD_NEGATIVE_GROUP = 4
# Split ids keep the train and evaluation streams disjoint for any index.
SPLITS = {"train": 0, "eval": 1}

CLASS_NAMES: List[str] = [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES]
NUM_CLASSES = len(CLASS_NAMES)

_PREFIXES = ["", "a photo of ", "an image of ", "there is ", "a picture showing ", "a scene with "]

# Every word a caption or a default zero-shot prompt can contain (the built-in tokenizer's
# vocabulary, in a fixed order so that token ids never change).
VOCAB_WORDS: List[str] = sorted(set(
    " ".join(_PREFIXES).split()
    + COLOUR_NAMES + SHAPES + SIZE_NAMES
    + "a an the at on in of and it to is with top bottom middle center left right below above"
      " photo image picture showing scene there this object shape one".split()))


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
                r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # pointing up
        return (dy <= 0.75 * r) & (np.abs(dx) <= (dy + r) * (0.95 / 1.75))
    if shape == "cross":
        arm = 0.35 * r
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    raise ValueError(shape)


def _where(cy: float, cx: float, size: int) -> str:
    row = "top" if cy < size / 3 else ("bottom" if cy > 2 * size / 3 else "middle")
    col = "left" if cx < size / 3 else ("right" if cx > 2 * size / 3 else "center")
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"at the {row} {col}"


def _relation(cy: float, cx: float, ref_y: float, ref_x: float) -> str:
    dy, dx = cy - ref_y, cx - ref_x
    if abs(dy) >= abs(dx):
        return "below it" if dy > 0 else "above it"
    return "to the right of it" if dx > 0 else "to the left of it"


def _background(rng: np.random.Generator, noise_rng: np.random.Generator, size: int) -> np.ndarray:
    """A dull, low-saturation background: base colour + linear gradient + pixel noise."""
    base = rng.uniform(20, 120) + rng.uniform(-15, 15, size=3)
    grad = rng.uniform(-40, 40, size=(2, 1, 1, 1))
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    img = base[None, None, :] + grad[0] * t[:, None, None] + grad[1] * t[None, :, None]
    img = img + noise_rng.normal(0.0, rng.uniform(2, 12), size=(size, size, 3))
    return img


def generate_scene(seed: int, split: str, index: int, image_size: int = 64) -> dict:
    """Draws one example; a pure function of its arguments.

    Returns:
      dict with image `uint8 [H, W, 3]`, caption `str`, masks `bool [3, H, W]` (one per object
      slot, all-False for absent objects), colour / shape / size `int32 [3]` (-1 when absent),
      num_objects `int32`, label `int32` (colour * len(SHAPES) + shape of the first object).
    """
    group = HARD_NEGATIVE_GROUP if split == "train" else 1
    rng = np.random.default_rng([seed, SPLITS[split], index // group])  # shared by the group
    own = np.random.default_rng([seed, SPLITS[split], index, 1])  # this example's alone
    n_obj = 1 if split == "eval" else 1 + int(rng.choice(MAX_OBJECTS, p=OBJECT_COUNT_PROBS))
    img = _background(rng, own, image_size)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    masks = np.zeros((MAX_OBJECTS, image_size, image_size), bool)
    attrs = -np.ones((3, MAX_OBJECTS), np.int32)
    placed = []  # (cy, cx, r)
    phrases = []
    for k in range(n_obj):
        colour = int(rng.integers(len(COLOUR_NAMES)))
        shape = (int(rng.integers(len(SHAPES))) + index % group) % len(SHAPES)
        size = int(rng.integers(len(SIZE_NAMES)))
        for _ in range(50):  # rejection-sample a spot that overlaps no earlier object
            r = rng.uniform(*SIZES[SIZE_NAMES[size]]) * image_size
            cy, cx = rng.uniform(r, image_size - r, size=2)
            # 1.25 r bounds every shape (a square's corner is at 1.2 r), so masks never overlap.
            if all((cy - py) ** 2 + (cx - px) ** 2 > (1.25 * (r + pr) + 2) ** 2
                   for py, px, pr in placed):
                break
        else:
            break  # no room left: keep the objects placed so far
        m = _shape_mask(SHAPES[shape], yy, xx, cy, cx, r)
        rgb = np.clip(np.array(COLOURS[COLOUR_NAMES[colour]]) + own.uniform(-20, 20, 3), 0, 255)
        img[m] = rgb
        masks[k] = m
        attrs[:, k] = (colour, shape, size)
        noun = f"a {SIZE_NAMES[size]} {COLOUR_NAMES[colour]} {SHAPES[shape]}"
        if k > 0 and rng.uniform() < 0.5:
            where = _relation(cy, cx, placed[0][0], placed[0][1])
        else:
            where = _where(cy, cx, image_size)
        phrases.append(f"{noun} {where}")
        placed.append((cy, cx, r))
    n_obj = len(placed)
    if n_obj == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    caption = _PREFIXES[int(rng.integers(len(_PREFIXES)))] + body
    return {
        "image": np.clip(img, 0, 255).astype(np.uint8),
        "caption": caption,
        "masks": masks,
        "colour": attrs[0],
        "shape": attrs[1],
        "size": attrs[2],
        "num_objects": np.int32(n_obj),
        "label": np.int32(attrs[0, 0] * len(SHAPES) + attrs[1, 0]),
    }


_KEYS = ("image", "caption", "masks", "colour", "shape", "size", "num_objects", "label")
_DTYPES = (tf.uint8, tf.string, tf.bool, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32)


def dataset(seed: int, split: str, image_size: int = 64, start: int = 0, stop: int = 2 ** 62,
            stride: int = 1, num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """A tf.data stream of examples with indices start, start + stride, ... < stop, in order.

    Each element is a dict: image `uint8 [H, W, 3]`, text `string` (the caption), masks
    `bool [3, H, W]`, colour / shape / size `int32 [3]`, num_objects and label `int32`.
    """
    if split not in SPLITS:
        raise ValueError(f"built-in dataset split must be one of {sorted(SPLITS)}, got {split!r}")

    def gen(i):
        ex = generate_scene(seed, split, int(i), image_size)
        return tuple(ex[k] if k != "caption" else ex[k].encode() for k in _KEYS)

    def to_dict(i):
        vals = tf.numpy_function(gen, [i], _DTYPES, stateful=False)
        shapes = ([image_size, image_size, 3], [], [MAX_OBJECTS, image_size, image_size],
                  [MAX_OBJECTS], [MAX_OBJECTS], [MAX_OBJECTS], [], [])
        out = {}
        for k, v, s in zip(_KEYS, vals, shapes):
            v.set_shape(s)
            out["text" if k == "caption" else k] = v
        return out

    ds = tf.data.Dataset.range(start, stop, stride)
    return ds.map(to_dict, num_parallel_calls=num_parallel_calls, deterministic=True)
