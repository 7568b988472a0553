"""``tokenreduce.train.finetune``: seeded, resumable, and never silent about bad input."""

from __future__ import annotations

import pytest
import torch

from tokenreduce import methods
from tokenreduce.train import FinetuneError, finetune
from tokenreduce.train import recipe as recipe_module

from ..conftest import make_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    model = make_vit("cls")
    model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return model


def dataset(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey uint8 32x32 images whose class sets the brightness of the top half (learnable)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 32, 32), generator=g, dtype=torch.uint8)
    images[:, :16] += (labels * 19).to(torch.uint8)[:, None, None]
    return images, labels


def run(out=None, steps: int = 3, **kw) -> torch.nn.Module:
    kw = {"batch_size": 8, "seed": 0, "threads": 1, "log": None, "checkpoint_every": 2, **kw}
    return finetune(tiny_model(), "tome:r=6", dataset(), steps=steps, out=out, **kw)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_and_the_weights_change():
    first, second = run(), run()
    assert same_weights(first, second)
    assert not same_weights(first, tiny_model())  # it trained
    assert not same_weights(first, run(seed=1))  # the seed matters
    assert not hasattr(first, "_tokenreduce_handle") and not first.training  # unpatched, eval


class Interrupted(Exception):
    pass


def test_resume_after_step_two_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    whole = run(ema=0.9)
    save = recipe_module.checkpoint.save

    def save_then_stop(out, step, *args):
        save(out, step, *args)
        if step == 2:
            raise Interrupted

    monkeypatch.setattr(recipe_module.checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        run(tmp_path, ema=0.9)
    monkeypatch.setattr(recipe_module.checkpoint, "save", save)
    lines = []
    resumed = run(tmp_path, ema=0.9, log=lines.append)
    assert "resumed from" in lines[0] and "at step 2" in lines[0]
    assert same_weights(whole, resumed)
    assert (tmp_path / "model.safetensors").is_file()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 3


def test_a_folder_with_another_run_is_refused(tmp_path):
    run(tmp_path, steps=2)
    with pytest.raises(FinetuneError, match=r"lr: saved 0.0001, now 0.001"):
        run(tmp_path, steps=2, lr=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"steps": 3, "epochs": 1.0}, FinetuneError, "exactly one of steps or epochs"),
        ({"steps": 0}, FinetuneError, "steps must be an integer >= 1, got 0"),
        ({"lr": -1.0}, FinetuneError, "lr must be a number > 0"),
        ({"batch_size": 100}, FinetuneError, r"batch_size must be an integer in \[1, 48\]"),
        ({"ema": 1.5}, FinetuneError, r"ema must be None or a decay in \(0, 1\)"),
        ({"method": "snapkv"}, methods.InvalidParameter, "fine-tuning takes a token method"),
        ({"train_data": (torch.zeros(4, 32, 32), torch.zeros(4))}, FinetuneError, "uint8"),
        ({"eval_data": [torch.zeros(4, 32, 32, dtype=torch.uint8), torch.zeros(3)]},
         FinetuneError, r"labels must be integers of shape \(4,\)"),
    ],
)  # fmt: skip
def test_bad_input_is_named(kwargs, error, words):
    args = {"method": "tome:r=6", "train_data": dataset(), "steps": 3, "batch_size": 8, **kwargs}
    with pytest.raises(error, match=words):
        finetune(tiny_model(), args.pop("method"), args.pop("train_data"), log=None, **args)
