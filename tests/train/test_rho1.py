"""Rho-1's selective language-modelling loss and its training recipe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenreduce.train import rho1
from tokenreduce.train.rho1 import Rho1Error, selective_lm_loss, token_losses

from ..lmutil import tiny_lm

V = 11


def _batch(seed: int = 0, b: int = 2, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V, generator=g) * 2
    labels = torch.randint(0, V, (b, t), generator=g)
    return logits, labels


def _peaked(targets: list[int], confident: list[bool]) -> torch.Tensor:
    """Logits (1, len + 1, V) whose prediction of each target is confident (low loss) or
    flat (loss log V)."""
    logits = torch.zeros(1, len(targets) + 1, V)
    for i, (tok, sure) in enumerate(zip(targets, confident, strict=True)):
        if sure:
            logits[0, i, tok] = 20.0
    return logits


def test_keep_ratio_one_is_plain_cross_entropy():
    logits, labels = _batch()
    labels[0, 3] = rho1.IGNORE_INDEX
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert torch.allclose(selective_lm_loss(logits, labels, None, 1.0), want)
    ref = torch.randn(2, 9, V)  # a reference changes nothing when every token is kept
    assert torch.allclose(selective_lm_loss(logits, labels, ref, 1.0), want)


def test_only_the_top_tokens_by_excess_loss_count():
    targets = [1, 2, 3, 4]
    labels = torch.tensor([[0, *targets]])
    # the model is unsure of tokens 0, 1 and 3; the reference is sure of 0 and 3 (excess
    # log V) but unsure of 1 (excess 0: noise to both), sure of 2 like the model (excess 0)
    model = _peaked(targets, [False, False, True, False])
    ref = _peaked(targets, [True, False, True, True])
    loss = selective_lm_loss(model, labels, ref, keep_ratio=0.5)  # 2 of 4 targets
    assert loss.item() == pytest.approx(math.log(V), rel=1e-4)
    per_token, _ = token_losses(model, labels)
    chosen = rho1.select_tokens(per_token - token_losses(ref, labels)[0], per_token > -1, 0.5)
    assert chosen.tolist() == [[True, False, False, True]]


def test_reference_losses_equal_reference_logits():
    logits, labels = _batch(1)
    ref = torch.randn(2, 9, V)
    ref_losses, _ = token_losses(ref, labels)
    a = selective_lm_loss(logits, labels, ref, 0.4)
    assert torch.equal(a, selective_lm_loss(logits, labels, ref_losses, 0.4))


def test_ignore_index_and_padding_never_selected():
    logits, labels = _batch(2)
    mask = torch.ones_like(labels)
    mask[0, :4] = 0  # left padding of row 0
    labels[1, 5] = rho1.IGNORE_INDEX
    ref = torch.full((2, 8), -1e3)  # every excess huge: only validity decides
    losses, valid = token_losses(logits, labels, mask)
    assert not valid[0, :3].any() and not valid[1, 4] and int(valid.sum()) == 16 - 3 - 1
    assert (losses[~valid] == 0).all()
    chosen = rho1.select_tokens(losses - ref, valid, 1.0)
    assert torch.equal(chosen, valid)
    # changing padded or ignored positions' logits leaves the loss unchanged
    other = logits.clone()
    other[0, :3] += 5
    other[1, 4] += 5
    for keep in (1.0, 0.5):
        a = selective_lm_loss(logits, labels, ref, keep, attention_mask=mask)
        assert torch.equal(a, selective_lm_loss(other, labels, ref, keep, attention_mask=mask))


def test_gradients_reach_only_selected_tokens():
    logits, labels = _batch(3)
    logits.requires_grad_(True)
    ref = torch.randn(2, 9, V)
    selective_lm_loss(logits, labels, ref, 0.25).backward()
    losses, valid = token_losses(logits.detach(), labels)
    chosen = rho1.select_tokens(losses - token_losses(ref, labels)[0], valid, 0.25)
    touched = logits.grad[:, :-1].abs().sum(-1) > 0
    assert torch.equal(touched, chosen) and int(chosen.sum()) == math.ceil(0.25 * 16)
    assert (logits.grad[:, -1] == 0).all()  # the last position predicts nothing


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan"), "0.5"])
def test_keep_ratio_outside_range_is_refused(keep):
    logits, labels = _batch()
    with pytest.raises(Rho1Error, match="keep_ratio must be a fraction in \\(0, 1\\]"):
        selective_lm_loss(logits, labels, torch.zeros(2, 8), keep)


def test_bad_shapes_are_refused():
    logits, labels = _batch()
    with pytest.raises(Rho1Error, match="labels \\(B, T\\)"):
        selective_lm_loss(logits, labels[:, :-1], None, 1.0)
    with pytest.raises(Rho1Error, match="reference losses must be"):
        selective_lm_loss(logits, labels, torch.zeros(2, 9), 0.5)
    with pytest.raises(Rho1Error, match="attention_mask must be"):
        selective_lm_loss(logits, labels, None, 1.0, attention_mask=torch.ones(2, 3))
    with pytest.raises(Rho1Error, match="needs the reference"):
        selective_lm_loss(logits, labels, None, 0.5)


def _data(n: int = 24, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 101, (n, t), generator=torch.Generator().manual_seed(5))


def _run(out=None, stop_at=None, tied=False):
    # tied: the byte-level Llama, whose LM head shares the embeddings (as SmolLM2's does)
    model = rho1.byte_llama(1, 16, layers=1, width=32) if tied else tiny_lm(seed=1)
    history = rho1.train_lm(model, tiny_lm(seed=2), _data(), steps=6, lr=1e-2, keep_ratio=0.6,
                            seed=3, out=out, batch_size=4, eval_data=_data(8), eval_every=3,
                            stop_at=stop_at)  # fmt: skip
    return model, history


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))  # fmt: skip


def test_recipe_is_seeded():
    a, ha = _run()
    b, hb = _run()
    assert ha == hb and len(ha["steps"]) == 6 and [e["step"] for e in ha["evals"]] == [3, 6]
    assert _same_weights(a, b)
    assert ha["steps"][-1]["tokens_seen"] == 6 * 4 * 11
    assert not torch.equal(a.model.embed_tokens.weight, tiny_lm(seed=1).model.embed_tokens.weight)


@pytest.mark.parametrize("tied", [False, True])
def test_recipe_resumes_exactly(tmp_path, tied):
    a, ha = _run(tied=tied)
    _, partial = _run(tmp_path, stop_at=4, tied=tied)
    assert len(partial["steps"]) == 4
    c, hc = _run(tmp_path, tied=tied)  # a fresh model, resumed from the checkpoint at step 4
    assert hc == ha and _same_weights(a, c)
    if tied:  # the checkpoint restores the tie, not two separate copies
        assert c.lm_head.weight.data_ptr() == c.model.embed_tokens.weight.data_ptr()


def test_recipe_refuses_bad_settings(tmp_path):
    model = tiny_lm()
    with pytest.raises(Rho1Error, match="needs a reference model"):
        rho1.train_lm(model, None, _data(), steps=2, keep_ratio=0.5)
    with pytest.raises(Rho1Error, match="data must be integer token ids"):
        rho1.train_lm(model, None, _data().float(), steps=2)
    with pytest.raises(Rho1Error, match="batch_size must be"):
        rho1.train_lm(model, None, _data(), steps=2, batch_size=100)
    rho1.train_lm(model, None, _data(), steps=1, batch_size=4, out=tmp_path)
    with pytest.raises(Rho1Error, match="lr: saved 0.001, now 0.01"):
        rho1.train_lm(model, None, _data(), steps=1, batch_size=4, lr=1e-2, out=tmp_path)


def test_spike_count_and_gradient_variance():
    losses = [2.0] * 30
    losses[25] = 2.5  # 1.25 x the running median
    assert rho1.spike_count(losses, factor=1.2, window=20) == 1
    assert rho1.spike_count(losses, factor=1.3, window=20) == 0
    assert rho1.grad_norm_variance([9.0] + [1.0, 3.0] * 5, skip=0.1) == pytest.approx(1.0)
