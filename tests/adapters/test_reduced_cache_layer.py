"""The reduced cache layer (``tokenreduce.adapters.hf_decoder.ReducedLayer``): the
bookkeeping a reduction leaves on a transformers cache layer, read through
``handle.trace.kv_state(cache)``, and the questions it answers by itself."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import tokenreduce
from tokenreduce.adapters.hf_decoder import ReducedLayer, cache_kwargs, output_cache
from tokenreduce.methods.snapkv import SnapKV

from ..lmutil import tiny_lm

pytest.importorskip("transformers")


def _host(entries: int, sliding: bool = False) -> SimpleNamespace:
    """A stand-in cache layer: one sample, one KV head, ``entries`` keys and values of width 2."""
    x = torch.arange(entries, dtype=torch.float32)[None, None, :, None].expand(1, 1, entries, 2)
    return SimpleNamespace(keys=x.clone(), values=x.clone(), is_sliding=sliding)


def test_select_mask_and_seen_length():
    host = _host(6)
    valid = torch.ones(1, 1, 6, dtype=torch.bool)
    rl = ReducedLayer.attach(host, valid, torch.arange(6)[None, None], torch.tensor([3]),
                             torch.tensor([0]))  # fmt: skip
    assert ReducedLayer.of(host) is rl and host.get_seq_length() == 6
    # Keep entries 1, 4, 5 (a filler slot first, as keep_per_head orders them).
    rl.select(torch.tensor([[[0, 1, 4, 5]]]), torch.tensor([[[False, True, True, True]]]))
    assert host.keys[0, 0, :, 0].tolist() == [0, 1, 4, 5]
    assert rl.time[0, 0].tolist() == [0, 1, 4, 5] and rl.position()[0, 0].tolist() == [-1, 1, 4, 5]
    assert host.get_seq_length() == 6  # 4 held + 2 dropped: every token seen
    # Two new tokens at time steps 6, 7: causal by time, filler never seen.
    t = rl.extend(6, torch.ones(1, 2, dtype=torch.bool))
    allowed = rl.mask(t, window=None)
    assert allowed[0, 0].int().tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    # A window of 3 steps: step 7 sees 5, 6, 7 only.
    assert rl.mask(t, window=3)[0, 0, 1].int().tolist() == [0, 0, 0, 1, 1, 1]


def test_follow_crop_drops_what_a_sliding_layer_dropped():
    host = _host(4, sliding=True)
    rl = ReducedLayer.attach(host, torch.ones(1, 1, 4, dtype=torch.bool), torch.arange(4)[None, None],
                             torch.tensor([4]), torch.tensor([0]))  # fmt: skip
    assert "get_seq_length" not in vars(host)  # a sliding layer counts what it saw itself
    rl.extend(4, torch.ones(1, 1, dtype=torch.bool))
    host.keys = host.keys[:, :, -3:]  # the layer cropped to its window after the append
    rl.follow_crop()
    assert rl.time[0, 0].tolist() == [2, 3, 4] and rl.valid.shape[-1] == 3


def test_kv_state_follows_each_copy_of_a_compressed_cache():
    """Two questions continued on copies of one compressed cache: each copy carries its own
    bookkeeping, bound to its own layers, and the original is untouched."""
    llama = tiny_lm("llama", layers=2)
    context = torch.randint(1, 101, (1, 20), generator=torch.Generator().manual_seed(0))
    patched = tokenreduce.patch(llama, SnapKV(cache_budget=10, window_size=4))
    with torch.no_grad(), patched as handle:
        cache = output_cache(llama(context, use_cache=True))
        before = [ls.time.clone() for ls in handle.trace.kv_state(cache)]
        copies = [copy.deepcopy(cache) for _ in range(2)]
        for extra, c in zip((3, 5), copies, strict=True):
            llama(torch.ones(1, extra, dtype=torch.long), **cache_kwargs(llama, c))
    for i, ls in enumerate(handle.trace.kv_state(cache)):
        assert torch.equal(ls.time, before[i]) and ls.host is cache.layers[i]
    assert cache.get_seq_length() == 20
    for extra, c in zip((3, 5), copies, strict=True):
        state = handle.trace.kv_state(c)
        assert all(ls.host is layer for ls, layer in zip(state, c.layers, strict=True))
        assert state[0].time[0, 0, -extra:].tolist() == list(range(20, 20 + extra))
        assert c.get_seq_length() == 20 + extra and c.layers[0].keys.shape[-2] == 10 + extra
