"""The scoring pieces of the KV-cache methods: ``grouped_attention_received`` (the attention
rows they score with) against a dense reference (one full softmax per query head, masked,
summed over the query rows), and the pooling of SnapKV and PyramidKV."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.kv import grouped_attention_received, pool_scores
from tokenreduce.methods import InvalidParameter, build


def reference(q, k, q_index, valid, scale, q_valid=None, k_index=None, window=None):
    b, hq, nq, _ = q.shape
    hkv, n = k.shape[1], k.shape[2]
    g = hq // hkv
    logits = (q * scale) @ k.repeat_interleave(g, dim=1).transpose(-2, -1)  # (B, Hq, Q, N)
    times = torch.arange(n).expand(b, hkv, n) if k_index is None else k_index
    times = times.repeat_interleave(g, dim=1)[:, :, None, :]
    key_ok = valid if valid.dim() == 3 else valid[:, None, :].expand(b, hkv, n)
    allowed = key_ok.repeat_interleave(g, dim=1)[:, :, None, :] & (times <= q_index[:, None])
    if window is not None:
        allowed &= times > q_index[:, None] - window
    if q_valid is None:
        q_valid = valid[:, q_index] if valid.dim() == 2 else torch.ones(b, nq, dtype=torch.bool)
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    probs = probs * q_valid[:, None, :, None]
    return probs.sum(2).view(b, hkv, g, n).mean(2)


@pytest.mark.parametrize("case", ["causal", "window", "reordered", "query_mask"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_dense_reference(case, seed):
    gen = torch.Generator().manual_seed(seed)
    b, hkv, g, d = 2, 2, 3, 8
    n = int(torch.randint(5, 60, (), generator=gen))
    nq = int(torch.randint(1, n + 1, (), generator=gen))
    q = torch.randn(b, hkv * g, nq, d, generator=gen)
    k = torch.randn(b, hkv, n, d, generator=gen)
    q_index = torch.arange(n - nq, n)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, : n // 3] = False  # a left-padded second sample
    kw = {}
    if case == "window":
        kw["window"] = int(torch.randint(1, n + 1, (), generator=gen))
    if case == "reordered":  # a cache already reduced per KV head: keys out of order, gaps
        valid = torch.rand(b, hkv, n, generator=gen) > 0.2
        kw["k_index"] = torch.stack(
            [torch.stack([torch.randperm(n, generator=gen) for _ in range(hkv)]) for _ in range(b)]
        )
        kw["window"] = int(torch.randint(1, 2 * n, (), generator=gen))
        q_index = torch.arange(n, n + nq)
    if case == "query_mask":
        kw["q_valid"] = torch.rand(b, nq, generator=gen) > 0.3
    chunk = int(torch.randint(1, 20, (), generator=gen))
    q_before = q.clone()
    got = grouped_attention_received(q, k, q_index, valid, 0.3, chunk=chunk, **kw)
    torch.testing.assert_close(
        got, reference(q, k, q_index, valid, 0.3, **kw), atol=1e-5, rtol=1e-5
    )
    assert torch.equal(q, q_before)  # the queries were not scaled in place


def test_pooling_modes():
    scores = torch.tensor([[[0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 3.0]]])
    assert torch.equal(pool_scores(scores, 1, "max"), scores)
    maxed = pool_scores(scores, 3, "max")[0, 0]
    assert maxed.tolist() == [0.0, 0.0, 9.0, 9.0, 9.0, 0.0, 3.0, 3.0]
    avg = pool_scores(scores, 3, "avg")[0, 0]
    torch.testing.assert_close(avg[2:5], torch.full((3,), 3.0))  # zero padding at the edges
    assert avg.sum() < maxed.sum()


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv"])
def test_pooling_parameter_is_checked(name):
    with pytest.raises(InvalidParameter, match="pooling.*'avg' or 'max'"):
        build(f"{name}:pooling=min")
    assert build(f"{name}:pooling=max,kernel_size=7").pooling == "max"
