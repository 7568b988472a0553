"""VTW on a tiny LLaVA: after layer K the language model holds no image token, in its hidden
states or its cache, and generation goes on from the text alone. The shared invariants
(identity, batched == per-sample on the vision-language model, refusal on a text-only model)
run in ``tests/invariants/test_cache_methods.py`` and ``test_every_family.py``."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.adapters.hf_decoder import output_cache
from tokenreduce.methods import VTW, InvalidParameter

from ..adapters.test_hf_llava import IMAGE, pixels, prompt
from ..lmutil import cache_lengths, left_pad

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def llava():
    return HFLlavaAdapter.examples()["llava"](num_hidden_layers=4)


@torch.no_grad()
def test_after_layer_k_no_image_token_is_left(llava):
    rows = [prompt(1, 0), prompt(2, 1)]
    ids, mask = left_pad(rows)
    text = int(((ids[0] != IMAGE) & (mask[0] == 1)).sum())  # 6 text tokens in each prompt
    seen = {}

    def record(i):
        def hook(module, args, kwargs):
            seen[i] = kwargs.get("hidden_states", args[0] if args else None)

        return hook

    layers = llava.model.language_model.layers
    hooks = [layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in range(4)]
    try:
        with tokenreduce.patch(llava, VTW(layer=1)) as handle:
            out = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels(3), use_cache=True)
            kept = handle.trace.prefill_kept
    finally:
        for h in hooks:
            h.remove()
    assert len(kept) == 1
    for b in range(2):
        real = kept[0][b][kept[0][b] >= 0]
        assert not bool((ids[b, real] == IMAGE).any())  # no image position survives
        assert real.numel() == text
    # layers 0 and 1 ran on the whole prompt, 2 and 3 on the text tokens only
    assert [seen[i].shape[1] for i in range(4)] == [ids.shape[1]] * 2 + [text] * 2
    assert cache_lengths(output_cache(out)) == [ids.shape[1]] * 2 + [text] * 2


@torch.no_grad()
def test_generation_goes_on_from_the_text(llava):
    """Decoding reads the text's cache only: five steps run, with finite scores that differ
    from the full model's, at a lower analytic cost."""
    ids = prompt(1, 0)

    def run():
        out = llava.generate(input_ids=ids, pixel_values=pixels(1), do_sample=False,
                             max_new_tokens=5, min_new_tokens=5, output_scores=True,
                             return_dict_in_generate=True)  # fmt: skip
        return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, 1)

    _, plain = run()
    with tokenreduce.patch(llava, VTW(layer=0)) as handle:
        tokens, scores = run()
        assert handle.gflops() < handle.baseline_gflops()
    assert tokens.shape == (1, 5) and not bool(scores.isnan().any())  # (EOS is held at -inf)
    assert not torch.allclose(scores, plain)


def test_refusals(llava, llama):
    with pytest.raises(InvalidParameter, match="vtw removes the image tokens.*text-only"):
        tokenreduce.patch(llama, VTW(layer=0))
    with pytest.raises(InvalidParameter, match="layer=3 leaves no layer"):
        tokenreduce.patch(llava, VTW(layer=3))
    with pytest.raises(InvalidParameter, match="layer=-1 is invalid"):
        VTW(layer=-1)
    ids = prompt(1, 0)
    embeds = llava.get_input_embeddings()(ids)
    with (
        torch.no_grad(),
        tokenreduce.patch(llava, VTW(layer=1)),
        pytest.raises(tokenreduce.ReductionNotApplied, match="image tokens are unknown"),
    ):
        llava(inputs_embeds=embeds, use_cache=True)


def test_the_default_sweep_runs_the_images_through_a_share_of_the_depth():
    assert [m.layer for m in VTW.default_sweep(32)] == [15, 7, 3]
    assert [m.layer for m in VTW.default_sweep(4)] == [1, 0]  # 11% and 25% of 4 layers: one
    assert [m.layer for m in VTW.default_sweep(32, quick=True)] == [7]
    assert VTW(layer=None).budget(tokenreduce.describe(HFLlavaAdapter.examples()["llava"]())
                                  ).keep(0, 16) == 16  # fmt: skip
