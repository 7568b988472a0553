"""The Qwen2.5-VL adapter: images of different sizes reduced on their own grids at the
handoff, the kept tokens' 3-D M-RoPE positions, image-only prefill candidates and the language
model's cache, on a tiny random Qwen2.5-VL (``HFQwenVLAdapter.examples``). The family-wide
invariants run in ``tests/invariants/test_every_family.py``."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFQwenVLAdapter
from tokenreduce.methods import TokenMethod, available, get
from tokenreduce.methods.downsample import cells_for

from ..conftest import placed

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOKEN_METHODS = [n for n in available() if issubclass(get(n), TokenMethod)]
GRIDS = [(2, 2), (2, 4)]  # merged token grids of the example batch's two images


@pytest.fixture(scope="module")
def qwen():
    return HFQwenVLAdapter.examples()["qwen2_5_vl"]()


@pytest.fixture(scope="module")
def batch(qwen):
    return HFQwenVLAdapter.example_batch(qwen)


def sample(batch: dict, b: int) -> dict:
    """Sample ``b`` of the example batch alone, without padding."""
    real = batch["attention_mask"][b].bool()
    sizes = batch["image_grid_thw"].prod(-1).tolist()
    start = sum(sizes[:b])
    one = {"input_ids": batch["input_ids"][b : b + 1, real],
           "attention_mask": batch["attention_mask"][b : b + 1, real],
           "pixel_values": batch["pixel_values"][start : start + sizes[b]],
           "image_grid_thw": batch["image_grid_thw"][b : b + 1]}  # fmt: skip
    if "mm_token_type_ids" in batch:
        one["mm_token_type_ids"] = batch["mm_token_type_ids"][b : b + 1, real]
    return one


def generate(model, inputs: dict):
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)  # fmt: skip
    return out.sequences[:, -3:], torch.stack(out.scores, 1)


@pytest.mark.parametrize("name", [*TOKEN_METHODS, "fastv", "snapkv"])
@torch.no_grad()
def test_batched_generate_equals_samples_one_by_one(qwen, batch, name):
    with tokenreduce.patch(qwen, placed(name, qwen)):
        batched, scores = generate(qwen, batch)
        alone = [generate(qwen, sample(batch, b)) for b in range(2)]
    assert torch.equal(batched, torch.cat([a[0] for a in alone]))
    torch.testing.assert_close(scores, torch.cat([a[1] for a in alone]), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_each_image_is_reduced_on_its_own_grid(qwen, batch):
    with tokenreduce.patch(qwen, placed("downsample", qwen, keep_ratio=0.5)) as handle:
        qwen(**batch, use_cache=True)
        kept = handle.trace.prefill_kept[0]
    image = batch["input_ids"] == qwen.config.image_token_id
    for b, (rows, cols) in enumerate(GRIDS):
        slots = kept[b][kept[b] >= 0]
        kept_image = int(image[b, slots].sum())
        h, w = cells_for(rows * cols // 2 + rows * cols % 2, rows, cols)
        assert kept_image == h * w  # the image's own cell grid
        text = (~image[b] & batch["attention_mask"][b].bool()).nonzero().squeeze(1)
        assert set(text.tolist()) <= set(slots.tolist())


@torch.no_grad()
def test_kept_tokens_keep_all_three_mrope_components(qwen, batch):
    seen = {}
    lm = qwen.model.language_model

    def record_positions(module, args, kwargs):
        seen["position_ids"] = kwargs["position_ids"]

    def record_rope(module, args, kwargs):
        seen["rope"] = kwargs["position_embeddings"]

    with tokenreduce.patch(qwen, placed("topk", qwen, keep_ratio=0.5)) as handle:
        hooks = [lm.register_forward_pre_hook(record_positions, with_kwargs=True),
                 lm.layers[0].self_attn.register_forward_pre_hook(record_rope, with_kwargs=True)]  # fmt: skip
        qwen(**batch, use_cache=True)
        for h in hooks:
            h.remove()
        kept = handle.trace.prefill_kept[0].clamp_min(0)
    positions = seen["position_ids"]  # (3, B, L): time, row, column
    assert positions.shape[0] == 3 and not torch.equal(positions[1], positions[2])
    gathered = positions.gather(2, kept[None].expand(3, -1, -1))
    cos, sin = lm.rotary_emb(seen["rope"][0], gathered)
    real = (handle.trace.prefill_kept[0] >= 0)[..., None]
    assert torch.equal(seen["rope"][0] * real, cos * real)
    assert torch.equal(seen["rope"][1] * real, sin * real)


def test_videos_are_refused(qwen, batch):
    inputs = {**batch, "pixel_values_videos": batch["pixel_values"]}
    with (
        tokenreduce.patch(qwen, placed("topk", qwen)),
        pytest.raises(tokenreduce.ReductionNotApplied, match="videos are not reduced"),
    ):
        qwen(**inputs)
