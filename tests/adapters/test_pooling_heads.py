"""Every pooling head weighs a merged token by its size, or the model is refused at patch time.

The check: an image made of two kinds of identical patches, position embeddings zeroed, so
patches of one kind stay exact duplicates through every block. ToMe (with proportional
attention) then merges only duplicates, and a model whose every size-dependent step weighs a
token of size ``s`` as ``s`` patches gives the same output as the unreduced one.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import tokenreduce
from tokenreduce.adapters.timm_vit import POOLS

from ..conftest import HF_TINY, TINY, images, make_vit, run

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

# timm >= 1.0.16: the attention pool takes a mask, so global_pool="map" can weigh sizes; on
# older timm (down to the lowest supported, 1.0.9) such a model must be refused instead.
_MAP_FORWARD = inspect.signature(timm.layers.AttentionPoolLatent.forward)
MAP_TAKES_MASK = "attn_mask" in _MAP_FORWARD.parameters

# timm global_pool -> constructor kwargs; every pooling head of POOLS ('' pools nothing).
TIMM_HEADS = {
    "token": {"class_token": True, "global_pool": "token"},
    "avg": {"class_token": False, "global_pool": "avg"},
    "avgmax": {"class_token": False, "global_pool": "avgmax"},
    "max": {"class_token": False, "global_pool": "max"},
    "map": {"class_token": False, "global_pool": "map"},
}


def make_timm(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **{**TINY, **kwargs}).eval()


def make_hf_head(name: str) -> nn.Module:
    """A tiny Hugging Face model whose main output goes through the family's pooling head."""
    torch.manual_seed(0)
    t = transformers
    if name == "vit_pooler":
        return t.ViTModel(t.ViTConfig(**HF_TINY, intermediate_size=96)).eval()
    if name == "vit_classifier":
        return t.ViTForImageClassification(
            t.ViTConfig(**HF_TINY, intermediate_size=96, num_labels=10)
        ).eval()
    if name == "dinov2":
        return t.Dinov2Model(t.Dinov2Config(**HF_TINY, mlp_ratio=2)).eval()
    if name == "dinov2_registers":
        cfg = t.Dinov2WithRegistersConfig(**HF_TINY, mlp_ratio=2, num_register_tokens=2)
        return t.Dinov2WithRegistersModel(cfg).eval()
    if name == "clip":
        return t.CLIPVisionModel(t.CLIPVisionConfig(**HF_TINY, intermediate_size=96)).eval()
    if name == "clip_projection":
        cfg = t.CLIPVisionConfig(**HF_TINY, intermediate_size=96, projection_dim=16)
        return t.CLIPVisionModelWithProjection(cfg).eval()
    if name == "siglip_map":
        cfg = t.SiglipVisionConfig(**HF_TINY, intermediate_size=96, vision_use_head=True)
        return t.SiglipVisionModel(cfg).eval()
    raise KeyError(name)


HF_HEADS = ("vit_pooler", "vit_classifier", "dinov2", "dinov2_registers", "clip",
            "clip_projection", "siglip_map")


def zero_positions(model: nn.Module) -> None:
    """Zero every position embedding, so equal patches give equal tokens."""
    found = False
    for name, p in model.named_parameters():
        if name.endswith(("pos_embed", "position_embeddings", "position_embedding.weight")):
            p.data.zero_()
            found = True
    assert found, "no position embedding found"


def two_kind_image(rows: int = 8, cols: int = 8, patch: int = 4) -> tuple[torch.Tensor, ...]:
    """(1, 3, rows*patch, cols*patch) image of two patch kinds, and the kind of each patch."""
    gen = torch.Generator().manual_seed(0)
    kinds = torch.randn(2, 3, patch, patch, generator=gen)
    kind = ((torch.arange(rows)[:, None] + torch.arange(cols)) % 3 == 0).long().flatten()
    tiles = kinds[kind].reshape(rows, cols, 3, patch, patch)
    return tiles.permute(2, 0, 3, 1, 4).reshape(1, 3, rows * patch, cols * patch), kind


def check_merging_duplicates_changes_nothing(model: nn.Module, num_prefix: int) -> None:
    zero_positions(model)
    x, kind = two_kind_image()
    with torch.inference_mode():
        expected = run(model, x)
        with tokenreduce.patch(model, "tome:r=6") as handle:
            out = run(model, x)
            state = handle.state
    # The premise: tokens were merged, and only patches of one kind with each other.
    assert state.merged and handle.trace.mlp_tokens[-1] == 64 + num_prefix - 24
    src = state.source[0, num_prefix:]
    for token in src.unique():
        assert kind[src == token].unique().numel() == 1
    err = (out - expected).norm() / expected.norm()
    assert err < 1e-5, f"merging duplicates changed the output by {err:.2e} (relative)"


def test_every_timm_pooling_head_is_covered():
    assert set(TIMM_HEADS) == set(POOLS) - {""}


def check_timm_head(model: nn.Module) -> None:
    if model.global_pool == "map" and not MAP_TAKES_MASK:
        with pytest.raises(TypeError, match="takes no attention mask"):
            tokenreduce.patch(model, "tome:r=6")
        return
    check_merging_duplicates_changes_nothing(model, model.num_prefix_tokens)


@pytest.mark.parametrize("pool", TIMM_HEADS)
def test_timm_head_weighs_merged_tokens_by_size(pool):
    check_timm_head(make_timm(**TIMM_HEADS[pool]))


def test_timm_map_head_over_register_tokens_weighs_merged_tokens_by_size():
    """``pool_include_prefix=True`` (timm < 1.0.16 always does): the attention pool reads the
    registers too."""
    include = {"pool_include_prefix": True} if MAP_TAKES_MASK else {}
    check_timm_head(make_timm(class_token=False, reg_tokens=2, global_pool="map", **include))


@pytest.mark.parametrize("name", HF_HEADS)
def test_hf_head_weighs_merged_tokens_by_size(name):
    model = make_hf_head(name)
    prefix = 0 if name.startswith("siglip") else 1 + (2 if name == "dinov2_registers" else 0)
    check_merging_duplicates_changes_nothing(model, prefix)


@pytest.mark.parametrize("pool", TIMM_HEADS)
@torch.inference_mode()
def test_unmerged_timm_head_is_bitwise_the_original(pool):
    """Before any merge (a zero budget) every head runs unchanged."""
    model, x = make_timm(**TIMM_HEADS[pool]), torch.randn(2, 3, 32, 32)
    if pool == "map" and not MAP_TAKES_MASK:
        check_timm_head(model)  # refused
        return
    expected = model(x)
    with tokenreduce.patch(model, "tome:r=0"):
        assert torch.equal(model(x), expected)


# -- heads that cannot weigh sizes are refused at patch time ---------------------------------
class AttentionPoolLatent(nn.Module):
    """Shaped like the attention pool of timm < 1.0.16: its forward takes no mask."""

    pos_embed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def _map_without_mask() -> nn.Module:
    model = make_timm(**TIMM_HEADS["map"])
    model.attn_pool = AttentionPoolLatent()
    return model


def _map_with_positions() -> nn.Module:
    model = make_timm(**TIMM_HEADS["map"])
    model.attn_pool.pos_embed = nn.Parameter(torch.zeros(64, 48))
    return model


def _prr() -> nn.Module:  # timm's parameter-free refinement pool: no mask, so no size weights
    return make_timm(class_token=False, global_pool="prr")


def _siglip_other_head() -> nn.Module:
    model = make_hf_head("siglip_map")
    model.head = nn.Linear(48, 48)
    return model


REFUSED = [
    (_map_without_mask, r"timm .* takes no attention mask.*upgrade timm to 1\.0\.16"),
    (_map_with_positions, r"position embedding: True\) cannot weigh a merged token"),
    (_siglip_other_head, r"pooling head is a Linear.*SiglipMultiheadAttentionPoolingHead"),
]
if hasattr(timm.layers, "AttentionPoolPrr"):  # global_pool="prr" exists from timm 1.0.26 on
    REFUSED.append((_prr, r"global_pool='prr'.*cannot weigh a merged token by its size.*'map'"))


@pytest.mark.parametrize("build, match", REFUSED, ids=lambda v: getattr(v, "__name__", ""))
def test_head_that_cannot_weigh_sizes_is_refused_at_patch_time(build, match):
    model = build()
    with pytest.raises(TypeError, match=match):
        tokenreduce.patch(model, "tome:r=4")
    assert tokenreduce.handle_of(model) is None
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_average_pool_weights_tokens_by_size():
    model = make_vit("avgpool")
    feats = {}
    model.fc_norm.register_forward_hook(lambda m, i, o: feats.__setitem__("pooled", i[0]))
    model.norm.register_forward_hook(lambda m, i, o: feats.__setitem__("tokens", o))
    with torch.inference_mode(), tokenreduce.patch(model, "tome:r=8") as handle:
        model(images())
        size = handle.state.size
    expected = (feats["tokens"] * size[..., None]).sum(1) / size.sum(1, keepdim=True)
    torch.testing.assert_close(feats["pooled"], expected)
    assert not torch.allclose(feats["pooled"], feats["tokens"].mean(1))
