"""Visual question answering data, offline: easy-VQA and seeded multi-object scenes.

Both come as a :class:`VQASplit`: images (uint8), and for every question its image, text, short
answer and question type, so accuracy can be reported per type.

* :func:`easy_vqa` reads the ``easy-vqa`` PyPI package (``pip install easy-vqa``), which ships
  its 64x64 images and questions inside the package: no network. One shape per image;
  question types ``presence`` (yes/no), ``color`` and ``shape``.
* :func:`scenes_vqa` renders scenes from a seed: 1 to 5 shapes (circle, square, triangle,
  diamond) in 6 colours with random sizes and positions on a plain light background, no two
  alike in both colour and shape, so "the red circle" always names one object. Question types
  ``presence``, ``color``, ``shape``, ``count`` and ``relation`` (left of / right of / above /
  below, asked only where the answer is clear by a margin). Answers are one word; counts are
  digits. Train and test come from separate seed streams: the test split is held out.
* :func:`grid_scenes_vqa` places one object in each cell of a coarse grid in turn (colour and
  shape questions, the cell of each): the position-bias benchmark's data.
* :func:`pope_vqa` asks POPE-style presence questions about the test scenes: objects shown,
  and absent ones chosen at random, by popularity or adversarially (like a present one).

>>> train = scenes_vqa("train", count=2000, seed=0)   # 2000 scenes, about 5 questions each
>>> train.images.shape, train.questions[0], train.answers[0], train.qtypes[0]
((2000, 112, 112, 3), 'is there a blue square?', 'yes', 'presence')
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 175),
    "orange": (240, 130, 20),
}
QTYPES = ("presence", "color", "shape", "count", "relation")
SPLITS = ("train", "test")
MAX_OBJECTS = 5
EASY_VQA_INSTALL = "pip install easy-vqa"
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class VQASplit:
    """Questions about images.

    Attributes:
        name: where the data came from, e.g. ``"scenes/test"``.
        images: (I, H, W, 3) uint8.
        image_index: (Q,) int64, the image each question is about.
        questions, answers, qtypes: Q strings each; answers are single lower-case words.
    """

    name: str
    images: np.ndarray
    image_index: np.ndarray
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    qtypes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, indices: np.ndarray | list[int]) -> VQASplit:
        """The questions at ``indices`` (all images kept, so image ids stay valid)."""
        idx = [int(i) for i in indices]
        return VQASplit(
            self.name,
            self.images,
            self.image_index[idx],
            tuple(self.questions[i] for i in idx),
            tuple(self.answers[i] for i in idx),
            tuple(self.qtypes[i] for i in idx),
        )

    def majority(self) -> dict[str, float]:
        """Per question type, the accuracy of always giving that type's most common answer."""
        out = {}
        for qtype in sorted(set(self.qtypes)):
            answers = [a for a, t in zip(self.answers, self.qtypes, strict=True) if t == qtype]
            _, counts = np.unique(answers, return_counts=True)
            out[qtype] = float(counts.max() / len(answers))
        return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --- easy-VQA ------------------------------------------------------------------------------


def easy_vqa_dir() -> Path:
    """The data folder of the installed ``easy_vqa`` package."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or spec.origin is None:
        raise ImportError(f"easy-VQA needs the package 'easy-vqa'; install: {EASY_VQA_INSTALL}")
    return Path(spec.origin).parent / "data"


def easy_vqa_qtype(answer: str) -> str:
    """easy-VQA's question type, read from its answer: yes/no, a shape, else a colour."""
    if answer in ("yes", "no"):
        return "presence"
    return "shape" if answer in EASY_VQA_SHAPES else "color"


def easy_vqa(split: str, limit: int | None = None) -> VQASplit:
    """easy-VQA's ``split`` ("train": 38,575 questions on 4,000 images; "test": 9,673 on
    1,000), 64x64 RGB images; ``limit`` keeps the first that many questions."""
    _check_split(split)
    easy_vqa_dir()  # a clear error first when the package is missing
    import easy_vqa as package
    from PIL import Image

    texts, answers, image_ids = getattr(package, f"get_{split}_questions")()
    paths = getattr(package, f"get_{split}_image_paths")()
    if limit is not None:
        texts, answers, image_ids = texts[:limit], answers[:limit], image_ids[:limit]
    used = sorted(set(image_ids))
    row = {image_id: i for i, image_id in enumerate(used)}
    images = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in used])
    return VQASplit(
        f"easy-vqa/{split}",
        images,
        np.array([row[i] for i in image_ids], dtype=np.int64),
        tuple(texts),
        tuple(answers),
        tuple(easy_vqa_qtype(a) for a in answers),
    )


# --- multi-object scenes -------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One shape: ``x``, ``y`` its centre and ``radius`` its circumradius, in pixels."""

    shape: str
    color: str
    x: float
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def sample_scene(rng: np.random.Generator, size: int) -> list[SceneObject]:
    """1 to ``MAX_OBJECTS`` non-overlapping objects, distinct in (colour, shape)."""
    kinds = [(s, c) for s in SHAPES for c in COLORS]
    picks = rng.permutation(len(kinds))[: rng.integers(1, MAX_OBJECTS + 1)]
    objects: list[SceneObject] = []
    for k in picks:
        for _ in range(100):  # rejection sampling; a free spot is found in a few tries
            radius = rng.uniform(0.07, 0.12) * size
            x, y = rng.uniform(radius + 1, size - radius - 1, 2)
            if all(np.hypot(x - o.x, y - o.y) > radius + o.radius + 2 for o in objects):
                objects.append(SceneObject(kinds[k][0], kinds[k][1], x, y, radius))
                break
    return objects


def _inside(obj: SceneObject, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u, v, r = xx - obj.x, yy - obj.y, obj.radius
    if obj.shape == "circle":
        return u**2 + v**2 <= r**2
    if obj.shape == "square":
        return (np.abs(u) <= 0.75 * r) & (np.abs(v) <= 0.75 * r)
    if obj.shape == "diamond":
        return np.abs(u) + np.abs(v) <= r
    # upward triangle: apex at the top, base at r / 2 below the centre
    return (v <= r / 2) & (v >= -r + 2 * np.abs(u) * 0.866)


def render_scene(objects: list[SceneObject], size: int, background: int) -> np.ndarray:
    """(size, size, 3) uint8: the objects on a plain grey background of level ``background``."""
    image = np.full((size, size, 3), background, dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    for obj in objects:
        image[_inside(obj, xx, yy)] = COLORS[obj.color]
    return image


def _plural(shape: str) -> str:
    return shape + "s"


def presence_question(shape: str, color: str) -> str:
    """The presence question about a (shape, colour): ``"is there a red circle?"``."""
    article = "an" if color[0] in "aeiou" else "a"
    return f"is there {article} {color} {shape}?"


def _presence(rng, objects):
    if rng.random() < 0.5:  # about half yes, half no
        obj = objects[rng.integers(len(objects))]
        shape, color = obj.shape, obj.color
    else:
        present = {(o.shape, o.color) for o in objects}
        absent = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in present]
        shape, color = absent[rng.integers(len(absent))]
    answer = "yes" if any((o.shape, o.color) == (shape, color) for o in objects) else "no"
    return presence_question(shape, color), answer


def _color(rng, objects):
    unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
    if not unique:
        return None
    obj = unique[rng.integers(len(unique))]
    return f"what color is the {obj.shape}?", obj.color


def _shape(rng, objects):
    unique = [o for o in objects if sum(p.color == o.color for p in objects) == 1]
    if not unique:
        return None
    obj = unique[rng.integers(len(unique))]
    return f"what shape is the {obj.color} object?", obj.shape


def _count(rng, objects):
    kind = rng.integers(3)
    if kind == 0:
        return "how many shapes are there?", str(len(objects))
    if kind == 1:
        shape = SHAPES[rng.integers(len(SHAPES))]
        n = sum(o.shape == shape for o in objects)
        return f"how many {_plural(shape)} are there?", str(n)
    color = list(COLORS)[rng.integers(len(COLORS))]
    n = sum(o.color == color for o in objects)
    return f"how many {color} shapes are there?", str(n)


RELATIONS = ("left of", "right of", "above", "below")


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool | None:
    """Whether ``a`` is ``relation`` ``b`` (image y grows downwards); None when the centres are
    too close on that axis (less than the larger radius apart) for the answer to be clear."""
    horizontal = relation in ("left of", "right of")
    delta = (b.x - a.x) if horizontal else (b.y - a.y)  # > 0: a is left of / above b
    if abs(delta) < max(a.radius, b.radius):
        return None
    return (delta > 0) == (relation in ("left of", "above"))


def _relation(rng, objects):
    pairs = [
        (a, b, rel)
        for a in objects
        for b in objects
        if a is not b
        for rel in RELATIONS
        if relation_holds(a, b, rel) is not None
    ]
    if not pairs:
        return None
    want = rng.random() < 0.5  # about half yes, half no
    matching = [p for p in pairs if relation_holds(*p) == want] or pairs
    a, b, rel = matching[rng.integers(len(matching))]
    answer = "yes" if relation_holds(a, b, rel) else "no"
    return f"is the {a.name} {rel} the {b.name}?", answer


_ASKERS = {
    "presence": _presence,
    "color": _color,
    "shape": _shape,
    "count": _count,
    "relation": _relation,
}


def ask(rng: np.random.Generator, objects: list[SceneObject]) -> list[tuple[str, str, str]]:
    """(question, answer, qtype) for every question type that fits the scene (colour needs a
    shape seen once, shape a colour seen once, relation two objects apart by a margin)."""
    out = []
    for qtype, asker in _ASKERS.items():
        qa = asker(rng, objects)
        if qa is not None:
            out.append((qa[0], qa[1], qtype))
    return out


def _split_seed(split: str, seed: int) -> np.random.SeedSequence:
    # Independent streams per split: the test scenes are not drawn from the train stream.
    return np.random.SeedSequence([seed, SPLITS.index(split)])


def scenes(
    split: str, count: int, seed: int = 0, size: int = 112
) -> tuple[np.ndarray, list[list[SceneObject]]]:
    """``count`` scenes of ``split``: images (count, size, size, 3) uint8 and their objects."""
    _check_split(split)
    if count < 1 or size < 32:
        raise ValueError(f"need count >= 1 and size >= 32, got count={count}, size={size}")
    rng = np.random.default_rng(_split_seed(split, seed))
    layouts, images = [], []
    for _ in range(count):
        objects = sample_scene(rng, size)
        layouts.append(objects)
        images.append(render_scene(objects, size, int(rng.integers(215, 256))))
    return np.stack(images), layouts


def scenes_vqa(split: str, count: int, seed: int = 0, size: int = 112) -> VQASplit:
    """Questions about ``count`` scenes of ``split`` (see the module docstring), deterministic
    given ``(split, count, seed, size)``; a larger ``count`` extends a smaller one."""
    images, layouts = scenes(split, count, seed, size)
    rng = np.random.default_rng(_split_seed(split, seed).spawn(1)[0])
    index, questions, answers, qtypes = [], [], [], []
    for i, objects in enumerate(layouts):
        for question, answer, qtype in ask(rng, objects):
            index.append(i)
            questions.append(question)
            answers.append(answer)
            qtypes.append(qtype)
    return VQASplit(
        f"scenes/{split}",
        images,
        np.array(index, dtype=np.int64),
        tuple(questions),
        tuple(answers),
        tuple(qtypes),
    )


# --- position bias: one object in each cell of a coarse grid -------------------------------


def cell_of(x: float, y: float, grid: int, size: int) -> int:
    """The cell (row-major, 0 to ``grid**2 - 1``) of a ``grid`` x ``grid`` split of a
    ``size``-pixel image that holds the point (``x``, ``y``)."""
    col = min(int(x * grid / size), grid - 1)
    row = min(int(y * grid / size), grid - 1)
    return row * grid + col


def object_in_cell(rng: np.random.Generator, cell: int, grid: int, size: int) -> SceneObject:
    """A random shape and colour drawn wholly inside ``cell`` (row-major) of a ``grid`` x
    ``grid`` split of the image, its radius as the scenes draw them (7 to 12% of ``size``),
    capped so that it fits in the cell with a pixel to spare."""
    span = size / grid
    row, col = divmod(cell, grid)
    radius = min(rng.uniform(0.07, 0.12) * size, span / 2 - 2)
    x = col * span + rng.uniform(radius + 1, span - radius - 1)
    y = row * span + rng.uniform(radius + 1, span - radius - 1)
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    return SceneObject(shape, color, x, y, radius)


def grid_scenes_vqa(
    grid: int = 3, per_cell: int = 4, seed: int = 0, size: int = 112
) -> tuple[VQASplit, np.ndarray]:
    """Scenes of one object each, placed in every cell of a ``grid`` x ``grid`` split of the
    image in turn (``per_cell`` rounds over the cells: ``grid**2 * per_cell`` images), two
    questions per image: its colour (``"what color is the circle?"``) and its shape (``"what
    shape is the red object?"``), the question types the scenes' model answers best.

    Returns ``(questions, cells)``: ``cells`` (Q,) int64 is the cell of each question's object,
    row-major. Deterministic given the arguments; its seed stream is neither the train nor the
    test scenes'. Raises ``ValueError`` for a grid whose cells are too small for an object
    (less than 16 pixels) or ``per_cell < 1``."""
    if grid < 1 or size / grid < 16 or per_cell < 1:
        raise ValueError(
            f"need grid >= 1 with cells of at least 16 px and per_cell >= 1; got grid={grid}, "
            f"size={size} (cells of {size / max(grid, 1):.0f} px), per_cell={per_cell}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(SPLITS), grid]))
    images, index, questions, answers, qtypes, cells = [], [], [], [], [], []
    for i in range(per_cell * grid * grid):
        obj = object_in_cell(rng, i % (grid * grid), grid, size)
        images.append(render_scene([obj], size, int(rng.integers(215, 256))))
        for qtype, asker in (("color", _color), ("shape", _shape)):
            question, answer = asker(rng, [obj])
            index.append(i)
            questions.append(question)
            answers.append(answer)
            qtypes.append(qtype)
            cells.append(i % (grid * grid))
    split = VQASplit(
        f"grid-scenes/{grid}x{grid}",
        np.stack(images),
        np.array(index, dtype=np.int64),
        tuple(questions),
        tuple(answers),
        tuple(qtypes),
    )
    return split, np.array(cells, dtype=np.int64)


# --- hallucination: POPE-style presence questions -----------------------------------------

#: how a POPE question's absent object is chosen (Li et al., *Evaluating Object Hallucination
#: in Large Vision-Language Models*, EMNLP 2023)
NEGATIVE_SAMPLING = ("random", "popular", "adversarial")
Kind = tuple[str, str]


def kind_counts(layouts: list[list[SceneObject]]) -> dict[Kind, int]:
    """How many scenes hold each (shape, colour), every kind listed (zero included)."""
    counts = {(s, c): 0 for s in SHAPES for c in COLORS}
    for objects in layouts:
        for obj in objects:
            counts[(obj.shape, obj.color)] += 1
    return counts


def negatives(
    rng: np.random.Generator,
    objects: list[SceneObject],
    count: int,
    sampling: str,
    counts: dict[Kind, int],
) -> list[Kind]:
    """``count`` distinct (shape, colour) kinds absent from ``objects``, chosen by ``sampling``
    (:data:`NEGATIVE_SAMPLING`): ``random``, any absent kind; ``popular``, the absent kinds
    most frequent in the data set (``counts``, ties by name); ``adversarial``, absent kinds like
    a present object: the same shape in another colour first, then the same colour in another
    shape, then any (random within each tier). Raises ``ValueError`` for another sampling."""
    if sampling not in NEGATIVE_SAMPLING:
        raise ValueError(f"sampling must be one of {NEGATIVE_SAMPLING}, got {sampling!r}")
    present = {(o.shape, o.color) for o in objects}
    absent = [k for k in counts if k not in present]
    if sampling == "popular":
        return sorted(absent, key=lambda k: (-counts[k], k))[:count]
    order = list(rng.permutation(len(absent)))
    if sampling == "adversarial":
        shapes, colors = {s for s, _ in present}, {c for _, c in present}
        tier = [0 if absent[i][0] in shapes else 1 if absent[i][1] in colors else 2 for i in order]
        order = [i for _, i in sorted(zip(tier, order, strict=True), key=lambda t: t[0])]
    return [absent[i] for i in order[:count]]


def pope_vqa(count: int, seed: int = 0, size: int = 112, per_image: int = 2) -> VQASplit:
    """POPE-style yes/no presence questions (``"is there a red circle?"``) about the first
    ``count`` test scenes (:func:`scenes`, held out from training): for each image up to
    ``per_image`` objects it shows (answer ``yes``, question type ``positive``) and as many
    absent ones by each of :data:`NEGATIVE_SAMPLING` (answer ``no``, the sampling as the
    question type). Each sampling's split is the positives plus its negatives, balanced per
    image as in POPE. Deterministic given the arguments."""
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    images, layouts = scenes("test", count, seed, size)
    counts = kind_counts(layouts)
    rng = np.random.default_rng(_split_seed("test", seed).spawn(2)[1])
    index, questions, answers, qtypes = [], [], [], []
    for i, objects in enumerate(layouts):
        shown = [objects[j] for j in rng.permutation(len(objects))[:per_image]]
        asked = [((o.shape, o.color), "yes", "positive") for o in shown]
        for sampling in NEGATIVE_SAMPLING:
            absent = negatives(rng, objects, len(shown), sampling, counts)
            asked += [(kind, "no", sampling) for kind in absent]
        for (shape, color), answer, qtype in asked:
            index.append(i)
            questions.append(presence_question(shape, color))
            answers.append(answer)
            qtypes.append(qtype)
    return VQASplit(
        "pope-scenes/test",
        images,
        np.array(index, dtype=np.int64),
        tuple(questions),
        tuple(answers),
        tuple(qtypes),
    )


__all__ = [
    "COLORS",
    "QTYPES",
    "SHAPES",
    "NEGATIVE_SAMPLING",
    "SceneObject",
    "VQASplit",
    "ask",
    "cell_of",
    "easy_vqa",
    "easy_vqa_dir",
    "grid_scenes_vqa",
    "kind_counts",
    "negatives",
    "object_in_cell",
    "pope_vqa",
    "presence_question",
    "relation_holds",
    "render_scene",
    "scenes",
    "scenes_vqa",
]
