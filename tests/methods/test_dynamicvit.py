"""DynamicViT: the predictor, inference by top-k, the masked training forward and its losses."""

from __future__ import annotations

import math

import pytest
import torch

import tokenreduce
from tokenreduce.methods import DynamicViT, InvalidParameter
from tokenreduce.methods.dynamicvit import KeepPredictor, StagePredictor
from tokenreduce.methods.dynamicvit_train import (
    distill_losses,
    forward_masked,
    masked_attention,
    ratio_loss,
    train,
)  # fmt: skip

from ..conftest import images, make_vit


def test_stage_predictor_gives_two_logits_per_token():
    x = torch.randn(2, 7, 16)
    assert StagePredictor(16)(x, torch.ones(2, 7)).shape == (2, 7, 2)


def test_predictor_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    predictor = KeepPredictor(16, 2).eval()
    predictor.save(tmp_path / "p.safetensors")
    loaded = KeepPredictor.load(tmp_path / "p.safetensors")
    x, policy = torch.randn(1, 5, 16), torch.ones(1, 5)
    assert len(loaded.stages) == 2 and loaded.dim == 16
    assert torch.equal(loaded.stages[1](x, policy), predictor.stages[1](x, policy))


def test_weights_are_required_unless_untrained(tmp_path):
    with pytest.raises(InvalidParameter, match="untrained=True"), torch.inference_mode():
        tokenreduce.patch(make_vit("cls"), DynamicViT(layers=(1, 2)))
    with pytest.raises(InvalidParameter, match="weights="):
        DynamicViT(weights="fmnist-vit", untrained=True)
    with pytest.raises(InvalidParameter, match="cannot be read"):
        DynamicViT(weights=str(tmp_path / "missing.safetensors"))
    KeepPredictor(16, 2).save(tmp_path / "two.safetensors")
    with pytest.raises(InvalidParameter, match="has 2 stages"):
        DynamicViT(weights=str(tmp_path / "two.safetensors"), layers=(3, 6, 9))


@torch.inference_mode()
def test_inference_keeps_exactly_the_ratio_per_stage():
    model = make_vit("cls")
    seen = []
    model.blocks[3].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    n = model.patch_embed.num_patches
    with tokenreduce.patch(model, DynamicViT(keep_ratio=0.5, layers=(1, 2), untrained=True)):
        model(images())
    assert seen == [1 + math.ceil(0.5 * math.ceil(0.5 * n))]


def test_gumbel_masks_pass_gradients_to_every_stage():
    torch.manual_seed(0)
    model = make_vit("cls").requires_grad_(False)
    predictor = KeepPredictor(model.embed_dim, 2)
    logits, _, policies = forward_masked(model, predictor, (1, 2), images())
    assert all(set(p.unique().tolist()) <= {0.0, 1.0} for p in policies)  # hard masks
    (logits.logsumexp(-1).sum() + ratio_loss(policies, 0.5, 1)).backward()
    for stage in predictor.stages:
        grad = stage.out_conv[-1].weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_masked_token_has_no_effect_on_the_others():
    torch.manual_seed(0)
    attn = make_vit("cls").blocks[0].attn
    x = torch.randn(1, 6, attn.qkv.in_features)
    policy = torch.tensor([[1.0, 1, 0, 1, 1, 1]])
    changed = x.clone()
    changed[:, 2] = torch.randn_like(changed[:, 2]) * 10
    a, b = masked_attention(attn, x, policy), masked_attention(attn, changed, policy)
    others = [0, 1, 3, 4, 5]
    assert torch.allclose(a[:, others], b[:, others], atol=1e-5)
    assert not torch.allclose(a[:, 2], b[:, 2])  # it still attends to itself and the others


def test_ratio_loss_on_hand_made_policies():
    kept_all = torch.ones(2, 5)  # class token + 4 patches, all kept
    half = torch.tensor([[1.0, 1, 1, 0, 0], [1.0, 0, 0, 1, 1]])
    # stage 1 target 0.5, kept 1.0 -> 0.25; stage 2 target 0.25, kept 0.5 -> 0.0625
    assert ratio_loss([kept_all, half], 0.5, prefix=1).item() == pytest.approx((0.25 + 0.0625) / 2)


def test_distill_losses_on_hand_made_inputs():
    logits = torch.tensor([[2.0, 0.0]])
    tokens = torch.zeros(1, 3, 2)
    teacher_tokens = torch.tensor([[[9.0, 9.0], [1.0, 1.0], [5.0, 5.0]]])
    policy = torch.tensor([[1.0, 1.0, 0.0]])  # the second patch is dropped: not distilled
    kl, mse = distill_losses(logits, logits, tokens, teacher_tokens, policy, prefix=1)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    assert mse.item() == pytest.approx(1.0)  # class token excluded, the kept patch's (1-0)^2
    kl, _ = distill_losses(torch.tensor([[0.0, 0.0]]), logits, tokens, tokens, policy, prefix=1)
    p = torch.softmax(logits, -1)[0]
    assert kl.item() == pytest.approx((p * (p / 0.5).log()).sum().item(), rel=1e-5)


def _tiny_training(seed: int, steps: int, out=None):
    model = make_vit("cls")
    model.pretrained_cfg = {"input_size": (3, 32, 32)}
    gen = torch.Generator().manual_seed(3)
    data = torch.randint(0, 256, (8, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, model.num_classes, (8,), generator=gen)
    return train(model, data, labels, steps=steps, layers=(1, 2), keep_ratio=0.5, batch_size=4,
                 seed=seed, out=out, every=1, log=None)  # fmt: skip


def test_seeded_training_is_reproducible_and_resumes(tmp_path):
    a, b = _tiny_training(0, 3), _tiny_training(0, 3)
    other = _tiny_training(1, 3)
    _tiny_training(0, 2, out=tmp_path)
    resumed = _tiny_training(0, 3, out=tmp_path)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
        assert torch.equal(value, resumed.state_dict()[key])
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in a.state_dict().items())
