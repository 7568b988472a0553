"""CDPruner: a conditional DPP over the image tokens, relevance to the instruction times
similarity; the instruction reaches the method through the VLM handoff's context."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.core.context import ModelInfo, TokenContext
from tokenreduce.core.state import TokenState
from tokenreduce.methods import CDPruner, InvalidParameter
from tokenreduce.methods.cdpruner import conditional_kernel, greedy_dpp, instruction_relevance

from ..adapters.test_hf_llava import generate, pixels, prompt
from ..conftest import make_vit, placed
from ..lmutil import left_pad

INFO = ModelInfo("test", 1, 0, False, (3, 4), "vision-language", gives_query=True)


def brute_force_greedy(kernel: torch.Tensor, keep: int) -> set[int]:
    """Greedy MAP by determinants: each step the token whose addition gives the largest
    ``det`` of the chosen block."""
    chosen: list[int] = []
    for _ in range(keep):
        rest = [i for i in range(kernel.shape[0]) if i not in chosen]
        dets = [torch.linalg.det(kernel[chosen + [i]][:, chosen + [i]]) for i in rest]
        chosen.append(rest[int(torch.stack(dets).argmax())])
    return set(chosen)


def context(features: torch.Tensor, query: torch.Tensor) -> TokenContext:
    b, n, _ = features.shape
    head = features[:, None]
    return TokenContext(0, features, head, head, TokenState.initial(b, n), INFO, 1.0,
                        query=query, query_mask=torch.ones(query.shape[:2], dtype=torch.bool))  # fmt: skip


def test_the_fast_greedy_update_is_the_greedy_determinant_choice():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 12, 16, generator=g, dtype=torch.float64)
    relevance = torch.rand(1, 12, generator=g, dtype=torch.float64)
    kernel = conditional_kernel(features, relevance)
    chosen = greedy_dpp(kernel, 5, torch.ones(1, 12, dtype=torch.bool))
    assert set(chosen[0].nonzero().squeeze(1).tolist()) == brute_force_greedy(kernel[0], 5)


def test_with_equal_relevance_it_is_the_plain_dpp_of_the_similarities():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 12, 8, generator=g)
    text = torch.randn(1, 3, 8, generator=g)
    ones = torch.ones(1, 12)
    alike = torch.ones(1, 12, 8)  # tokens equally relevant to any instruction: relevance 1
    assert torch.equal(instruction_relevance(alike, text, None, ones.bool()), ones.double())
    # equal relevance: the kernel is the cosine similarity, its greedy MAP a diversity choice
    unit = torch.nn.functional.normalize(features.double(), dim=-1)[0]
    expected = brute_force_greedy(unit @ unit.T, 4)
    kernel = conditional_kernel(features, ones)
    chosen = greedy_dpp(kernel, 4, ones.bool())
    assert set(chosen[0].nonzero().squeeze(1).tolist()) == expected


def test_changing_the_instruction_changes_the_choice():
    # tokens 0..5 point one way, 6..11 another; the instruction names one of the two
    g = torch.Generator().manual_seed(2)
    base = torch.eye(8)
    features = torch.cat([base[0] + 0.3 * torch.randn(6, 8, generator=g),
                          base[1] + 0.3 * torch.randn(6, 8, generator=g)])[None]  # fmt: skip
    kept = []
    for word in (base[0], base[1]):
        red = CDPruner(keep_ratio=0.25, layers=(0,)).reduce(context(features, word[None, None]), 9)
        kept.append(set(red.anchor[0].tolist()))
    assert kept[0] != kept[1]
    assert sum(i < 6 for i in kept[0]) > sum(i < 6 for i in kept[1])  # follows the instruction


def test_a_model_without_an_instruction_refuses_it():
    with pytest.raises(InvalidParameter, match="cdpruner ranks tokens by their relevance to the"):
        tokenreduce.patch(make_vit(), CDPruner(layers=(1,)))


@torch.no_grad()
def test_the_prompt_reaches_the_handoff_and_batches_equal_samples():
    llava = HFLlavaAdapter.examples()["llava"]()
    rows = [prompt(1, 0), prompt(2, 1)]
    ids, mask = left_pad(rows)
    px = pixels(3)
    with tokenreduce.patch(llava, placed("cdpruner", llava, keep_ratio=0.25)) as handle:
        batched, scores = generate(llava, ids, mask, px)
        alone = [generate(llava, rows[0], torch.ones_like(rows[0]), px[:1]),
                 generate(llava, rows[1], torch.ones_like(rows[1]), px[1:])]  # fmt: skip
        # the same image under two instructions: the kept tokens follow the text
        other = rows[0].clone()
        other[0, 18:] = (other[0, 18:] + 7) % 90 + 10  # other words after the image
        kept = []
        for text in (rows[0], other):
            llava(input_ids=text, pixel_values=px[:1])
            kept.append(handle.state.position[0].tolist())
    assert torch.equal(batched, torch.cat([a[0] for a in alone]))
    torch.testing.assert_close(scores, torch.cat([a[1] for a in alone]), atol=1e-4, rtol=1e-4)
    assert len(kept[0]) == len(kept[1]) == 4 and kept[0] != kept[1]


@torch.no_grad()
def test_images_without_a_prompt_to_read_are_refused():
    llava = HFLlavaAdapter.examples()["llava"]()
    embeds = llava.get_input_embeddings()(prompt(1, 0))
    with (
        tokenreduce.patch(llava, placed("cdpruner", llava)),
        pytest.raises(tokenreduce.ReductionNotApplied, match="no image placeholder"),
    ):
        llava(inputs_embeds=embeds, pixel_values=pixels(1), use_cache=True)
