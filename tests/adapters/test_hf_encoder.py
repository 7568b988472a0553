"""Hugging Face text encoders (BERT, RoBERTa, DistilBERT): right-padded batches reduce per sample, [CLS]
and each sample's [SEP] survive, SDPA stays on, and sentence embeddings weigh merged tokens
by their size."""

from __future__ import annotations

import pytest
import torch

import tokenreduce
from tokenreduce.adapters import HFEncoderAdapter
from tokenreduce.core.reducers import bipartite_merge
from tokenreduce.methods import InvalidParameter
from tokenreduce.text import mean_pool

from ..conftest import make_vit, record_sdpa_masks

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = (14, 9, 5)
SPECS = [
    "tome:r=3",
    "tome:r=3,order='original'",
    "topk:keep_ratio=0.5,layers=(1,2)",
    "evit:keep_ratio=0.5,layers=(1,2)",
    "random:keep_ratio=0.5,layers=(1,2)",
    "power_bert:keep_ratio=0.4",
    "ltp:threshold=0.2",
]


def encoder(name: str = "hf_bert") -> torch.nn.Module:
    return HFEncoderAdapter.examples()[name]()


def padded(lengths=LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, max length) and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return ids * mask, mask


def ends(state, sample: int) -> list[int]:
    """Original positions of the protected tokens of ``sample``."""
    return state.position[sample][state.protected[sample]].tolist()


@pytest.mark.parametrize("name", ["hf_bert", "hf_roberta", "hf_distilbert"])
@pytest.mark.parametrize("spec", SPECS)
@torch.no_grad()
def test_padded_batch_equals_samples_one_by_one(name, spec):
    model, (ids, mask) = encoder(name), padded()
    with tokenreduce.patch(model, spec) as handle:
        batched = model(ids, attention_mask=mask).last_hidden_state
        state, pooled = handle.state, mean_pool(batched, handle)
        alone = []
        for b, n in enumerate(LENGTHS):
            out = model(ids[b : b + 1, :n], attention_mask=mask[b : b + 1, :n]).last_hidden_state
            alone.append((handle.state, mean_pool(out, handle)))
    reduced = False
    for b, (one, emb) in enumerate(alone):
        real = state.valid[b] if state.valid is not None else torch.ones_like(state.size[b]) > 0
        assert torch.equal(state.position[b, real], one.position[0])
        assert torch.equal(state.size[b, real], one.size[0])
        assert ends(state, b) == [0, LENGTHS[b] - 1]  # [CLS] and this sample's [SEP]
        torch.testing.assert_close(pooled[b : b + 1], emb, atol=1e-5, rtol=1e-4)
        reduced |= one.num_tokens < LENGTHS[b]
    assert reduced, f"{spec} removed nothing"
    assert bool((state.position[:, 0] == 0).all())  # [CLS] stays first: the pooler reads it


@pytest.mark.parametrize("name", ["hf_bert", "hf_roberta", "hf_distilbert"])
@torch.no_grad()
def test_zero_budget_is_bitwise_the_model_and_unpatch_restores(name):
    model, (ids, mask) = encoder(name), padded()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(ids, attention_mask=mask)
    for spec in ("tome:r=0", "power_bert:keep_ratio=1.0", "ltp:threshold=0"):
        with tokenreduce.patch(model, spec) as handle:
            out = model(ids, attention_mask=mask)
            assert torch.equal(out.last_hidden_state, plain.last_hidden_state), spec
            if name != "hf_distilbert":  # DistilBERT has no pooler
                assert torch.equal(out.pooler_output, plain.pooler_output), spec
            assert torch.equal(mean_pool(out.last_hidden_state, handle),
                               mean_pool(plain.last_hidden_state, attention_mask=mask))  # fmt: skip
        with tokenreduce.patch(model, "topk:keep_ratio=0.3,layers=(0,)"):
            assert model(ids, attention_mask=mask).last_hidden_state.shape[1] < ids.shape[1]
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(ids, attention_mask=mask).last_hidden_state, plain.last_hidden_state)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@torch.no_grad()
def test_mean_pool_weighs_merged_tokens_by_size_and_ignores_padding():
    model, (ids, mask) = encoder(), padded()
    with tokenreduce.patch(model, "tome:r=4") as handle:
        hidden = model(ids, attention_mask=mask).last_hidden_state
        size = handle.state.size
        assert bool((size > 1).any()) and not bool(size[~handle.state.valid].any())
        expected = (hidden * size[..., None]).sum(1) / size.sum(1, keepdim=True)
        torch.testing.assert_close(mean_pool(hidden, handle), expected)
        assert torch.equal(size.sum(1), mask.sum(1).float())  # every real token counted once
        with pytest.raises(ValueError, match="does not match"):
            mean_pool(hidden[:, :2], handle)
    with pytest.raises(ValueError, match="not both"):
        mean_pool(hidden, handle, attention_mask=mask)


@torch.no_grad()
def test_sdpa_stays_on_in_every_layer_and_hides_padding_slots(monkeypatch):
    model, (ids, mask) = encoder(), padded()
    masks = record_sdpa_masks(monkeypatch)
    with tokenreduce.patch(model, "topk:keep_ratio=0.5,layers=(1,)") as handle:
        model(ids, attention_mask=mask)
    assert len(masks) == model.config.num_hidden_layers  # every layer ran the fused kernel
    later = masks[2]  # after the reduction: the adapter's mask, from the ragged state
    assert later.shape == (3, 1, 1, handle.state.num_tokens)
    hidden = later[:, 0, 0] == torch.finfo(later.dtype).min
    assert torch.equal(hidden, ~handle.state.valid)


@torch.no_grad()
def test_bad_batches_and_models_fail_clearly():
    model, (ids, mask) = encoder(), padded()
    with tokenreduce.patch(model, "tome:r=2"):
        with pytest.raises(ValueError, match="right-padded"):
            model(ids, attention_mask=mask.flip(1))
        with pytest.raises(ValueError, match="at least two real tokens"):
            model(ids[:, :3], attention_mask=torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    import transformers

    cfg = transformers.BertConfig(**{**vars(model.config), "is_decoder": True})
    with pytest.raises(TypeError, match="decoder"):
        tokenreduce.patch(transformers.BertModel(cfg), "tome:r=2")
    with pytest.raises(TypeError, match="BertModel, RobertaModel, DistilBertModel"):
        tokenreduce.patch(transformers.BertForMaskedLM(model.config), "tome:r=2")
    with pytest.raises(InvalidParameter, match="per-input token-sequence"):
        tokenreduce.patch(make_vit("cls"), "ltp:threshold=0.1")  # no padding slots in a ViT


def test_bipartite_merge_never_touches_a_protected_token_outside_the_prefix():
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(2, 11, 8, generator=g)
    metric[:, 10] = metric[:, 9]  # [SEP] is the most similar token to its neighbour
    protected = torch.zeros(2, 11, dtype=torch.bool)
    protected[:, [0, 10]] = True
    size = torch.ones(2, 11)
    for order in ("reference", "original"):
        red = bipartite_merge(metric, 5, protected, size, order, 2, prefix=False)
        merged = red.apply(size, "sum")
        kept = red.apply(protected.float(), "sum")
        assert merged.shape[1] == 11 - 4  # the unprotected A tokens (2, 4, 6, 8) all go
        assert torch.equal(merged[kept > 0], torch.ones(4))  # [CLS], [SEP] stand alone
