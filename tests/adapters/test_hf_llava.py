"""The LLaVA adapter: token methods at the handoff (the projector's output rewriting the
language model's prompt) and KV-cache methods on the language model, on tiny random LLaVA
models (``HFLlavaAdapter.examples``). The family-wide invariants (zero budget, guard, unpatch)
run in ``tests/invariants/test_every_family.py``."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFLlavaAdapter
from tokenreduce.methods import InvalidParameter, TokenMethod, available, get

from ..conftest import placed
from ..lmutil import left_pad

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOKEN_METHODS = [n for n in available() if issubclass(get(n), TokenMethod)]
IMAGE = 5  # the examples' image token
N = 16  # image tokens per image (a 4x4 grid)


@pytest.fixture(scope="module")
def llava():
    return HFLlavaAdapter.examples()["llava"]()


def prompt(images: int, seed: int) -> torch.Tensor:
    """(1, 6 + images * N): two text tokens, the image placeholders, four text tokens."""
    words = torch.randint(10, 100, (6,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([words[:2], torch.full((images * N,), IMAGE), words[2:]])[None]


def pixels(images: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(images, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def generate(model, ids, mask, px, steps: int = 4):
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, do_sample=False,
                         max_new_tokens=steps, output_scores=True, return_dict_in_generate=True)  # fmt: skip
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, 1)


def batched_equals_alone(model, method) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts with one and two images (different kept counts), left-padded, generate under
    ``method`` as each alone (asserted). Returns the ids, the mask and the prompt tokens kept
    at the last site (B, M), -1 for filler."""
    rows = [prompt(1, 0), prompt(2, 1)]
    ids, mask = left_pad(rows)
    px = pixels(3)
    with tokenreduce.patch(model, method) as handle:
        batched, scores = generate(model, ids, mask, px)
        kept = handle.trace.prefill_kept[-1]
        alone = [generate(model, rows[0], torch.ones_like(rows[0]), px[:1]),
                 generate(model, rows[1], torch.ones_like(rows[1]), px[1:])]  # fmt: skip
    assert torch.equal(batched, torch.cat([a[0] for a in alone]))
    torch.testing.assert_close(scores, torch.cat([a[1] for a in alone]), atol=1e-4, rtol=1e-4)
    return ids, mask, kept


@pytest.mark.parametrize("name", TOKEN_METHODS)
@torch.no_grad()
def test_batched_generate_equals_samples_one_by_one(llava, name):
    ids, mask, kept = batched_equals_alone(llava, placed(name, llava))
    rows = [prompt(1, 0), prompt(2, 1)]
    lengths = (kept >= 0).sum(1)
    assert lengths[0] < rows[0].shape[1] and lengths[1] < rows[1].shape[1]  # images reduced
    for b in range(2):  # every text token survives, at its own place
        text = ((ids[b] != IMAGE) & mask[b].bool()).nonzero().squeeze(1)
        assert set(text.tolist()) <= set(kept[b].tolist())


@torch.no_grad()
def test_kept_image_tokens_keep_their_positions(llava):
    ids = prompt(1, 0)
    seen = {}

    def record(module, args, kwargs):
        seen["rope"] = kwargs["position_embeddings"]

    lm = llava.model.language_model
    with tokenreduce.patch(llava, placed("topk", llava, keep_ratio=0.25)) as handle:
        hook = lm.layers[0].self_attn.register_forward_pre_hook(record, with_kwargs=True)
        llava(input_ids=ids, pixel_values=pixels(1), use_cache=True)
        hook.remove()
        kept = handle.trace.prefill_kept[0]
    assert kept[0].tolist()[:2] == [0, 1] and kept[0].tolist()[-4:] == [18, 19, 20, 21]
    assert kept.shape[1] == 6 + 4  # the text and a quarter of the 16 image tokens
    cos, sin = lm.rotary_emb(seen["rope"][0], position_ids=kept)
    assert torch.equal(seen["rope"][0], cos) and torch.equal(seen["rope"][1], sin)


@torch.no_grad()
def test_zero_budget_generates_as_the_plain_model(llava):
    ids, mask = left_pad([prompt(1, 0), prompt(2, 1)])
    plain = generate(llava, ids, mask, pixels(3))
    with tokenreduce.patch(llava, placed("topk", llava, keep_ratio=1.0)):
        same = generate(llava, ids, mask, pixels(3))
    assert torch.equal(same[0], plain[0]) and torch.equal(same[1], plain[1])


@pytest.mark.parametrize("name", ["snapkv", "streamingllm"])
@torch.no_grad()
def test_kv_cache_methods_compress_the_language_models_cache(llava, name):
    rows = [prompt(1, 0), prompt(2, 1)]
    ids, mask = left_pad(rows)
    px = pixels(3)
    cls = get(name)
    with tokenreduce.patch(llava, cls.for_tests(compression_ratio=0.5)) as handle:
        batched, _ = generate(llava, ids, mask, px)
        entries = list(handle.trace.kv_entries)
        alone = [generate(llava, rows[0], torch.ones_like(rows[0]), px[:1])[0],
                 generate(llava, rows[1], torch.ones_like(rows[1]), px[1:])[0]]  # fmt: skip
    assert torch.equal(batched, torch.cat(alone))
    assert all(e is not None and e < ids.shape[1] for e in entries)


def test_a_token_method_has_one_site_the_handoff(llava):
    with pytest.raises(InvalidParameter, match="outside this model's layers 0..0"):
        tokenreduce.patch(llava, "topk:keep_ratio=0.5,layers=[1]")
    info = tokenreduce.describe(llava, TokenMethod)
    assert (info.num_layers, info.grid, info.num_prefix) == (1, (4, 4), 0)
    assert tokenreduce.describe(llava).num_layers == 2  # the language model's, for cache methods
    full = HFLlavaAdapter.examples()["llava_full"]()
    info = tokenreduce.describe(full, get("topk"))
    assert (info.num_prefix, info.has_class_token) == (1, True)  # the class token is protected


@pytest.mark.parametrize("name", ["fastv", "lazyllm"])
@torch.no_grad()
def test_prefill_methods_prune_image_tokens_only(llava, name):
    ids, mask, kept = batched_equals_alone(llava, get(name).for_tests(prune_ratio=0.5))
    for b, images in enumerate((1, 2)):
        real = set(mask[b].nonzero().squeeze(1).tolist())
        text = {i for i in real if ids[b, i] != IMAGE}
        kept_b = set(kept[b].tolist()) - {-1}
        assert text <= kept_b  # every text token survives
        assert len(kept_b - text) == images * N // 2  # half of the image tokens are gone


@torch.no_grad()
def test_image_features_without_input_ids_are_refused(llava):
    ids = prompt(1, 0)
    embeds = llava.get_input_embeddings()(ids)
    with (
        tokenreduce.patch(llava, placed("topk", llava)),
        pytest.raises(tokenreduce.ReductionNotApplied, match="no image placeholder"),
    ):
        llava(inputs_embeds=embeds, pixel_values=pixels(1), use_cache=True)


@torch.no_grad()
def test_the_handoff_ranks_image_tokens_by_the_towers_class_attention(llava):
    """The class token is not handed over (strategy "default"), yet class-attention methods
    rank by it: the attention its query pays at the tower's feature layer, as the tower's own
    eager attention map says."""
    px = pixels(1, seed=3)
    tower = llava.model.vision_tower
    impl = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        maps = tower(px, output_attentions=True).attentions[-1]  # vision_feature_layer=-1
    finally:
        tower.config._attn_implementation = impl
    ranked = maps[0, :, 0, 1:].mean(0).argsort(descending=True)[:4].sort().values
    ids = prompt(1, 0)
    with tokenreduce.patch(llava, placed("topk", llava, keep_ratio=0.25)) as handle:
        llava(input_ids=ids, pixel_values=px, use_cache=True)
        kept = handle.trace.prefill_kept[0][0]
    image = kept[(kept >= 2) & (kept < 2 + N)] - 2  # positions within the image
    assert image.tolist() == ranked.tolist()


@torch.no_grad()
def test_an_image_count_that_does_not_match_the_placeholders_fails_clearly(llava):
    ids = prompt(1, 0)
    plain = llava(input_ids=ids, pixel_values=pixels(1)).logits
    with tokenreduce.patch(llava, placed("topk", llava)):
        failed = pytest.raises(ValueError, match="(?i)image")
        with failed:
            llava(input_ids=ids, pixel_values=pixels(2))  # two images, one image's placeholders
        llava(input_ids=ids, pixel_values=pixels(1), use_cache=True)  # the patch still works
    assert torch.equal(llava(input_ids=ids, pixel_values=pixels(1)).logits, plain)


@torch.no_grad()
def test_generate_equals_the_language_model_run_on_the_kept_tokens_by_hand(llava):
    """The reference: the plain language model fed the kept prompt tokens' embeddings at their
    original positions, then greedy steps at the positions that follow the whole prompt."""
    from transformers import DynamicCache

    from tokenreduce.lm import cache_kwargs

    ids, px = prompt(1, 0), pixels(1, seed=5)
    projected = {}
    hook = llava.model.multi_modal_projector.register_forward_hook(
        lambda m, a, out: projected.setdefault("features", out)
    )
    llava(input_ids=ids, pixel_values=px)
    hook.remove()
    embeds = llava.get_input_embeddings()(ids)
    embeds[ids == IMAGE] = projected["features"][0]
    with tokenreduce.patch(llava, placed("topk", llava, keep_ratio=0.25)) as handle:
        tokens, _ = generate(llava, ids, torch.ones_like(ids), px, steps=3)
        kept = handle.trace.prefill_kept[0]
    lm, cache = llava.model.language_model, DynamicCache()
    x, position, expected = embeds[:, kept[0]], kept, []
    for step in range(3):
        out = lm(inputs_embeds=x, position_ids=position, use_cache=True, **cache_kwargs(lm, cache))
        token = llava.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
        expected.append(int(token))
        x = llava.get_input_embeddings()(token[:, None])
        position = torch.tensor([[ids.shape[1] + step]])
    assert tokens[0].tolist() == expected


@pytest.mark.parametrize("name", ["visionzip", "fastv", "snapkv"])
@torch.no_grad()
def test_sdpa_stays_on(llava, name, monkeypatch):
    from ..conftest import record_sdpa_masks

    calls = record_sdpa_masks(monkeypatch)
    with tokenreduce.patch(llava, placed(name, llava)):
        llava(input_ids=prompt(1, 0), pixel_values=pixels(1), use_cache=True)
    vision = llava.config.vision_config.num_hidden_layers
    language = llava.config.text_config.num_hidden_layers
    assert len(calls) == vision + language  # every attention layer ran the fused kernel


@torch.no_grad()
def test_the_grid_is_the_images_own_when_the_tower_runs_at_another_size(llava):
    """DINOv2 interpolates its position embeddings: 42 x 42 images give 6 x 6 patches where the
    config says 4 x 4, and grid methods pool the grid the tokens form."""
    n = 36
    ids = torch.cat([torch.tensor([11, 12]), torch.full((n,), IMAGE), torch.tensor([13, 14])])
    px = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(0))
    with tokenreduce.patch(llava, placed("downsample", llava, keep_ratio=0.25)) as handle:
        llava(input_ids=ids[None], pixel_values=px, use_cache=True)
        kept = handle.trace.prefill_kept[0][0]
    assert int((ids[kept] == IMAGE).sum()) == 9  # 3 x 3 cells of the 6 x 6 grid


@torch.no_grad()
def test_the_handle_holds_the_images_token_state(llava):
    ids, mask = left_pad([prompt(1, 0), prompt(2, 1)])
    with tokenreduce.patch(llava, placed("tome", llava, r=6)) as handle:
        generate(llava, ids, mask, pixels(3))
        state = handle.state
    assert state.size.shape == (3, N - 6)  # three images, each merged by 6
    assert torch.equal(state.size.sum(1), torch.full((3,), float(N)))
    assert state.merged
