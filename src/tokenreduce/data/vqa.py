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


def _presence(rng, objects):
    if rng.random() < 0.5:  # about half yes, half no
        obj = objects[rng.integers(len(objects))]
        shape, color = obj.shape, obj.color
    else:
        present = {(o.shape, o.color) for o in objects}
        absent = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in present]
        shape, color = absent[rng.integers(len(absent))]
    answer = "yes" if any((o.shape, o.color) == (shape, color) for o in objects) else "no"
    article = "an" if color[0] in "aeiou" else "a"
    return f"is there {article} {color} {shape}?", answer


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


__all__ = [
    "COLORS",
    "QTYPES",
    "SHAPES",
    "SceneObject",
    "VQASplit",
    "ask",
    "easy_vqa",
    "easy_vqa_dir",
    "relation_holds",
    "render_scene",
    "scenes",
    "scenes_vqa",
]
