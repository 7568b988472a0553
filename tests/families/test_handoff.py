"""A reduction at the vision side's output rewrites the language model's inputs (the handoff
site), for every token method, on the test-only vision-language model."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.core.handoff import handoff
from tokenreduce.core.reduction import Reduction

from ..conftest import identity, placed
from ..lmutil import left_pad
from .toy_vlm import IMAGE_TOKEN, ToyVLM
from .util import TOKEN_METHODS

N = 16  # tokens per image


@pytest.fixture
def vlm() -> ToyVLM:
    torch.manual_seed(0)
    return ToyVLM().eval()


def prompt(images: int, text: int = 5, seed: int = 0) -> torch.Tensor:
    """Ids (1, text + images * N): 2 text tokens, the images' placeholders, then the rest."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, 40, (text,), generator=g)
    parts = [words[:2], torch.full((images * N,), IMAGE_TOKEN), words[2:]]
    return torch.cat(parts)[None]


class LMInputs:
    """Records what the language model receives (after the adapter's rewrite)."""

    def __init__(self, vlm: ToyVLM) -> None:
        self.seen: list[dict] = []
        self.hook = vlm.language_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs) -> None:
        self.seen.append(dict(kwargs))


def run(vlm, ids, mask, images):
    with torch.no_grad():
        return vlm(ids, images, mask)[:, -1]


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_batched_handoff_equals_samples_one_by_one(vlm, name):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 16, 16, generator=g)
    rows = [prompt(1, seed=0), prompt(2, seed=1)]  # samples with 1 and 2 images
    ids, mask = left_pad(rows)
    with tokenreduce.patch(vlm, placed(name, vlm)):
        lm = LMInputs(vlm)
        batched = run(vlm, ids, mask, images)
        alone = [run(vlm, rows[0], torch.ones_like(rows[0]), images[:1]),
                 run(vlm, rows[1], torch.ones_like(rows[1]), images[1:])]  # fmt: skip
        lm.hook.remove()
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-4)
    fed, fed0, fed1 = lm.seen
    kept = [int(f["attention_mask"].sum()) for f in (fed0, fed1)]
    assert kept[0] < rows[0].shape[1] and kept[1] < rows[1].shape[1]  # images were reduced
    assert fed["attention_mask"].sum(1).tolist() == kept  # each sample keeps its own count
    assert fed["inputs_embeds"].shape[1] == max(kept)  # shorter sample padded, on the left
    for b, f in enumerate((fed0, fed1)):
        real = fed["attention_mask"][b].bool()
        assert torch.equal(fed["position_ids"][b, real], f["position_ids"][0])
        torch.testing.assert_close(fed["inputs_embeds"][b, real], f["inputs_embeds"][0])


def test_positions_after_the_handoff_are_the_kept_tokens_own(vlm):
    ids = prompt(1)
    with tokenreduce.patch(vlm, placed("topk", vlm, keep_ratio=0.25)) as handle:
        lm = LMInputs(vlm)
        run(vlm, ids, torch.ones_like(ids), torch.randn(1, 16, 16))
        lm.hook.remove()
    (fed,) = lm.seen
    positions = fed["position_ids"][0].tolist()
    assert len(positions) == 5 + 4  # 5 text tokens and a quarter of 16 image tokens
    assert positions[:2] == [0, 1] and positions[-3:] == [18, 19, 20]  # text keeps its place
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert handle.state.position[0].tolist() == positions


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_handoff_at_zero_budget_is_the_identity(vlm, name):
    ids, mask = left_pad([prompt(1), prompt(2, seed=1)])
    images = torch.randn(3, 16, 16)
    plain = run(vlm, ids, mask, images)
    with tokenreduce.patch(vlm, identity(name, vlm)):
        assert torch.equal(run(vlm, ids, mask, images), plain)
    assert torch.equal(run(vlm, ids, mask, images), plain)  # and unpatched again


def test_a_merged_image_token_is_the_average_the_image_reduction_gave():
    features = torch.randn(1, 4, 3)
    red = Reduction.from_groups(
        torch.tensor([[0, 0, 2, 2]]), torch.tensor([[1.0, 3.0, 1.0, 1.0]]),
        torch.tensor([[True, False, True, False]]),
    )  # fmt: skip
    placeholders = torch.tensor([[False, True, True, True, True, False]])
    embeds = torch.randn(1, 6, 3)
    embeds[placeholders] = features[0]
    lifted = handoff(red, placeholders)
    out = lifted.apply(embeds)
    assert out.shape == (1, 4, 3)
    torch.testing.assert_close(out[0, 1:3], red.apply(features)[0])
    assert torch.equal(out[0, [0, 3]], embeds[0, [0, 5]])  # text tokens untouched
    assert lifted.apply(torch.arange(6)[None], "anchor").tolist() == [[0, 1, 3, 5]]


def test_handoff_refuses_placeholders_that_do_not_hold_whole_images():
    red = Reduction.select(torch.tensor([[0, 2]]), 4)
    with pytest.raises(ValueError, match="3 image placeholder tokens, but 1 images of 4"):
        handoff(red, torch.tensor([[False, True, True, True]]))
    two = Reduction.select(torch.tensor([[0], [1]]), 2)
    with pytest.raises(ValueError, match="straddle two samples"):
        handoff(two, torch.tensor([[False, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="pad_side must be one of"):
        handoff(red, torch.ones(1, 4, dtype=torch.bool), pad_side="middle")
