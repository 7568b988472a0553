"""VQA data: the seeded multi-object scenes (answers recomputed from the scene and the pixels)
and the easy-VQA reader."""

from __future__ import annotations

import hashlib
import importlib.util
import re

import numpy as np
import pytest

from tokenreduce.data.vqa import (
    COLORS,
    QTYPES,
    SHAPES,
    SceneObject,
    easy_vqa,
    easy_vqa_dir,
    relation_holds,
    scenes,
    scenes_vqa,
)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_same_seed_same_data_other_seed_other_data():
    a, b = scenes_vqa("train", 20, seed=3), scenes_vqa("train", 20, seed=3)
    assert np.array_equal(a.images, b.images)
    assert (a.questions, a.answers, a.qtypes) == (b.questions, b.answers, b.qtypes)
    assert np.array_equal(a.image_index, b.image_index)
    c = scenes_vqa("train", 20, seed=4)
    assert not np.array_equal(a.images, c.images)


def test_a_larger_count_extends_a_smaller_one():
    small, large = scenes_vqa("train", 5, seed=1), scenes_vqa("train", 12, seed=1)
    assert np.array_equal(large.images[:5], small.images)
    assert large.questions[: len(small)] == small.questions
    assert large.answers[: len(small)] == small.answers


def test_test_split_is_held_out():
    train, test = scenes_vqa("train", 300, seed=0), scenes_vqa("test", 100, seed=0)
    assert not {_digest(i) for i in train.images} & {_digest(i) for i in test.images}


def _recount(question: str, objects: list[SceneObject]) -> str:
    if question == "how many shapes are there?":
        return str(len(objects))
    word = re.fullmatch(r"how many (\w+?)s? (?:shapes )?are there\?", question).group(1)
    return str(sum(word in (o.shape, o.color) for o in objects))


def _named(name: str, objects: list[SceneObject]) -> SceneObject:
    (obj,) = [o for o in objects if o.name == name]
    return obj


def _answer_from_scene(question: str, qtype: str, objects: list[SceneObject]) -> str:
    """Each question type answered again, independently of the generator's code paths."""
    if qtype == "count":
        return _recount(question, objects)
    if qtype == "presence":
        color, shape = re.fullmatch(r"is there an? (\w+) (\w+)\?", question).groups()
        return "yes" if f"{color} {shape}" in {o.name for o in objects} else "no"
    if qtype == "color":
        shape = re.fullmatch(r"what color is the (\w+)\?", question).group(1)
        (obj,) = [o for o in objects if o.shape == shape]
        return obj.color
    if qtype == "shape":
        color = re.fullmatch(r"what shape is the (\w+) object\?", question).group(1)
        (obj,) = [o for o in objects if o.color == color]
        return obj.shape
    a, rel, b = re.fullmatch(
        r"is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\?", question
    ).groups()
    a, b = _named(a, objects), _named(b, objects)
    axis = "x" if "of" in rel else "y"
    before = getattr(a, axis) < getattr(b, axis)  # left of / above in image coordinates
    assert abs(getattr(a, axis) - getattr(b, axis)) >= max(a.radius, b.radius)  # clear-cut
    return "yes" if before == (rel in ("left of", "above")) else "no"


def test_every_answer_follows_from_the_scene():
    data = scenes_vqa("test", 200, seed=5)
    _, layouts = scenes("test", 200, seed=5)
    for i, question, answer, qtype in zip(
        data.image_index, data.questions, data.answers, data.qtypes, strict=True
    ):
        assert answer == _answer_from_scene(question, qtype, layouts[i]), question


def test_objects_are_drawn_in_their_colour_where_the_scene_says():
    images, layouts = scenes("train", 50, seed=2)
    for image, objects in zip(images, layouts, strict=True):
        assert 1 <= len(objects) <= 5
        assert len({o.name for o in objects}) == len(objects)  # names are unambiguous
        for o in objects:
            assert tuple(image[int(o.y), int(o.x)]) == COLORS[o.color]
        # the background is one grey level; every other pixel belongs to an object colour
        background = image[0, 0]
        assert background[0] == background[1] == background[2] >= 215
        others = {tuple(p) for p in image.reshape(-1, 3)} - {tuple(background)}
        assert others == {COLORS[o.color] for o in objects}


def test_every_question_type_occurs_and_yes_no_types_are_balanced():
    data = scenes_vqa("train", 400, seed=0)
    assert set(data.qtypes) == set(QTYPES)
    for qtype in ("presence", "relation"):
        answers = [a for a, t in zip(data.answers, data.qtypes, strict=True) if t == qtype]
        assert set(answers) == {"yes", "no"}
        assert 0.4 < answers.count("yes") / len(answers) < 0.6
    majority = data.majority()
    assert majority["color"] < 0.3 and majority["shape"] < 0.4  # 6 colours, 4 shapes


def test_answers_are_single_words_from_a_closed_set():
    data = scenes_vqa("train", 100, seed=1)
    allowed = {"yes", "no", *SHAPES, *COLORS, *map(str, range(6))}
    assert set(data.answers) <= allowed


def test_relations_mirror_and_need_a_margin():
    a = SceneObject("circle", "red", x=20, y=50, radius=8)
    b = SceneObject("square", "blue", x=60, y=54, radius=10)
    assert relation_holds(a, b, "left of") and relation_holds(b, a, "right of")
    assert relation_holds(a, b, "right of") is False
    assert relation_holds(a, b, "above") is None  # 4 px apart vertically: not clear


def test_subset_keeps_images_and_aligns_fields():
    data = scenes_vqa("train", 10, seed=0)
    sub = data.subset([3, 0])
    assert sub.questions == (data.questions[3], data.questions[0])
    assert sub.answers == (data.answers[3], data.answers[0])
    assert list(sub.image_index) == [data.image_index[3], data.image_index[0]]
    assert sub.images is data.images


def test_bad_arguments_name_what_is_allowed():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\)"):
        scenes_vqa("val", 3)
    with pytest.raises(ValueError, match=r"count >= 1"):
        scenes_vqa("train", 0)


needs_easy_vqa = pytest.mark.skipif(
    importlib.util.find_spec("easy_vqa") is None, reason="pip install easy-vqa"
)


@needs_easy_vqa
def test_easy_vqa_reads_the_packaged_files():
    # The package ships its images and questions: the reader touches no network.
    folder = easy_vqa_dir()
    assert (folder / "test" / "questions.json").is_file()
    data = easy_vqa("test")
    assert len(data) == 9673 and data.images.shape == (1000, 64, 64, 3)
    assert data.images.dtype == np.uint8
    assert data.image_index.max() == len(data.images) - 1
    assert set(data.qtypes) == {"presence", "color", "shape"}
    for question, answer, qtype in zip(data.questions, data.answers, data.qtypes, strict=True):
        assert (qtype == "presence") == (answer in ("yes", "no"))
        if qtype == "shape":
            assert question.startswith("what") and "color" not in question


@needs_easy_vqa
def test_easy_vqa_limit_keeps_only_the_images_used():
    data = easy_vqa("train", limit=30)
    assert len(data) == 30
    assert len(data.images) == len(set(data.image_index.tolist()))
