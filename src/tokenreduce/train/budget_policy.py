"""Budgets learned by reward: a contextual bandit that picks each input's keep ratio.

The position paper's budget reward (Kong et al., 2025, section on adaptive budgets) trades
correctness against tokens used, ``R = correct - alpha * |n - n_target|``. Here a
:class:`~tokenreduce.core.adaptive.LevelPolicy` chooses one of a few keep-ratio levels per input
from :func:`~tokenreduce.core.adaptive.budget_features` of the class-token attention at the
first reduction site, and is trained as an epsilon-greedy contextual bandit: each step a
seeded batch of inputs gets a level each (the greedy one, or with probability ``epsilon`` a
random one), only the chosen level's reward is revealed, and that level's linear value moves
towards it by a least-squares gradient step.

:func:`calibrate` then sets the policy's price per unit of keep ratio so that its mean keep
ratio lands on a target, which is how it is compared with uniform and training-free adaptive
budgets at equal mean budget. At inference a token method takes it as an adaptive rule:
``"topk:keep_ratio=0.5,adaptive=policy,adaptive_policy=runs/budget-policy/policy-50.json"``.

The experiment on the demo ViT: ``python -m tokenreduce.train.budget_policy --out
runs/budget-policy`` (:func:`experiment`).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from ..core.adaptive import BUDGET_FEATURES, LevelPolicy

#: the default keep-ratio levels a policy chooses from
LEVELS = (0.25, 0.5, 0.75, 1.0)


def reward(correct: Tensor, n: Tensor, n_target: float, alpha: float) -> Tensor:
    """The paper's budget reward ``correct - alpha * |n - n_target|``, elementwise.

    ``correct`` (B,) bool or 0/1; ``n`` (B,) budgets used and ``n_target`` in one unit (tokens,
    or keep ratios as here); ``alpha`` >= 0 the reward per unit of budget off target. Returns
    (B,) float32. Raises ``ValueError`` for a negative ``alpha`` or mismatched shapes.
    """
    if not alpha >= 0:
        raise ValueError(
            f"alpha (reward per unit of budget off target) must be >= 0; got {alpha!r}"
        )
    if correct.shape != n.shape:
        raise ValueError(
            f"correct {tuple(correct.shape)} and n {tuple(n.shape)} must have one shape"
        )
    return correct.float() - alpha * (n.float() - n_target).abs()


def _check_bandit(features: Tensor, outcomes: Tensor, levels: tuple[float, ...]) -> None:
    if features.dim() != 2 or features.shape[1] != len(BUDGET_FEATURES):
        raise ValueError(f"features must be (S, {len(BUDGET_FEATURES)}) ({', '.join(BUDGET_FEATURES)}); "
                         f"got {tuple(features.shape)}")  # fmt: skip
    if tuple(outcomes.shape) != (features.shape[0], len(levels)):
        raise ValueError(f"outcomes must be (S, L) = ({features.shape[0]}, {len(levels)}): whether "
                         f"each input is right at each level; got {tuple(outcomes.shape)}")  # fmt: skip


def train_bandit(
    features: Tensor,
    outcomes: Tensor,
    *,
    n_target: float,
    alpha: float,
    steps: int,
    levels: tuple[float, ...] = LEVELS,
    batch_size: int = 64,
    epsilon: float = 0.1,
    lr: float = 0.5,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> LevelPolicy:
    """Train a level policy by epsilon-greedy bandit steps on logged outcomes.

    Args:
        features: (S, F) :func:`budget_features` of S training inputs.
        outcomes: (S, L) bool, whether input s is classified right at level l; the bandit
            sees only the entry of the level it chose.
        n_target, alpha: the reward's target keep ratio and its price per unit off target.
        steps: bandit steps in all (a resumed run continues up to this count).
        levels: the keep ratios to choose from, increasing in (0, 1].
        batch_size, epsilon, lr: inputs per step, exploration probability, step size.
        seed: each step's draws come from a generator seeded by (seed, step), so a run
            resumed from its checkpoint equals the uninterrupted one.
        checkpoint: a JSON file: read to resume when it exists, written at the end.

    Returns:
        The trained policy (price 0). Raises ``ValueError`` for mismatched shapes or settings.
    """
    _check_bandit(features, outcomes, levels)
    if steps < 0 or batch_size < 1 or not 0 <= epsilon <= 1 or not lr > 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1, 0 <= epsilon <= 1, lr > 0; got "
                         f"{steps}, {batch_size}, {epsilon}, {lr}")  # fmt: skip
    weights, start = torch.zeros(len(levels), features.shape[1] + 1), 0
    if checkpoint is not None and Path(checkpoint).is_file():
        weights, start = _read_checkpoint(Path(checkpoint), levels)
    x_all = torch.cat([features.float(), torch.ones(features.shape[0], 1)], dim=1)
    level_values = torch.tensor(levels)
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(features.shape[0], (batch_size,), generator=gen)
        x = x_all[idx]
        explore = torch.rand(batch_size, generator=gen) < epsilon
        random_arm = torch.randint(len(levels), (batch_size,), generator=gen)
        arm = torch.where(explore, random_arm, (x @ weights.T).argmax(dim=1))
        r = reward(outcomes[idx, arm], level_values[arm], n_target, alpha)
        error = r - (x * weights[arm]).sum(dim=1)
        # each level's value moves by the mean gradient over the inputs that chose it
        grad = torch.zeros_like(weights).index_add_(0, arm, error[:, None] * x)
        chosen = torch.bincount(arm, minlength=len(levels)).clamp_min(1)
        weights += lr * grad / chosen[:, None]
    if checkpoint is not None:
        Path(checkpoint).write_text(json.dumps({"step": max(steps, start), "levels": list(levels),
                                                "weights": weights.tolist()}) + "\n")  # fmt: skip
    return LevelPolicy(tuple(levels), weights)


def _read_checkpoint(path: Path, levels: tuple[float, ...]) -> tuple[Tensor, int]:
    data = json.loads(path.read_text())
    if tuple(data["levels"]) != tuple(levels):
        raise ValueError(f"checkpoint {path} has levels {data['levels']}, this run {list(levels)}")
    return torch.tensor(data["weights"], dtype=torch.float32), int(data["step"])


def mean_level(policy: LevelPolicy, features: Tensor) -> float:
    """The mean keep ratio ``policy`` chooses over (S, F) features."""
    return float(torch.tensor(policy.levels)[policy.choose(features)].mean())


def calibrate(policy: LevelPolicy, features: Tensor, target: float) -> LevelPolicy:
    """``policy`` with the lowest price at which its mean keep ratio over (S, F) ``features``
    is at most ``target`` (bisection; a higher price never picks higher levels, and a negative
    price, a subsidy, raises a policy that spends too little). The mean lands just under the
    target when the levels cannot hit it exactly. Raises ``ValueError`` for a target below the
    lowest level or above 1."""
    if not policy.levels[0] <= target <= 1:
        raise ValueError(
            f"target keep ratio must be in [{policy.levels[0]}, 1] (the lowest level "
            f"to all); got {target!r}"
        )
    values = LevelPolicy(policy.levels, policy.weights).values(features)
    gap = min((b - a for a, b in zip(policy.levels, policy.levels[1:], strict=False)), default=1.0)
    # beyond +-bound every input picks the lowest (highest) level whatever its values
    bound = float(values.max() - values.min()) / gap + 1.0
    low, high = -bound, bound
    for _ in range(60):
        mid = (low + high) / 2
        fits = mean_level(LevelPolicy(policy.levels, policy.weights, mid), features) <= target
        low, high = (low, mid) if fits else (mid, high)
    return LevelPolicy(policy.levels, policy.weights, high)


# ---- the experiment on the demo ViT -------------------------------------------------------


def site_scores(model, images: Tensor, layer: int, batch_size: int = 250) -> Tensor:
    """(S, n) class-token attention over the n reducible tokens at block ``layer`` of the
    demo ViT for (S, H, W) uint8 ``images``: the scores the adaptive rules and the policy read,
    recorded from ``topk`` at that block (they are computed before it prunes)."""
    from ..api import patch
    from ..data.fashion_mnist import preprocess
    from ..methods import TopK

    method, rows = TopK(keep_ratio=0.5, layers=(layer,)), []
    prune = method.reduce

    def recording(ctx, n_remove):
        reducible = ~ctx.state.protected
        rows.append(ctx.class_attention[reducible].view(ctx.hidden.shape[0], -1).float())
        return prune(ctx, n_remove)

    method.reduce = recording  # on this instance only: the adapter calls method.reduce
    with torch.no_grad(), patch(model, method):
        for i in range(0, len(images), batch_size):
            model(preprocess(images[i : i + batch_size], model))
    return torch.cat(rows)


def correct_at_counts(model, images: Tensor, labels: Tensor, layer: int, counts: Tensor) -> Tensor:
    """(S,) bool: whether each image is classified right when ``topk`` at block ``layer`` keeps
    ``counts[s]`` of its reducible tokens (a count of all of them runs the unreduced model).
    Images sharing a count run as one batch, so each is exactly as if alone at its count."""
    from ..api import patch
    from ..data.fashion_mnist import preprocess
    from ..methods import TopK

    n = model.patch_embed.num_patches
    right = torch.zeros(len(images), dtype=torch.bool)
    for count in counts.unique().tolist():
        idx = (counts == count).nonzero().squeeze(1)
        # ceil((count - 0.5) / n * n) == count: the keep ratio that keeps exactly `count`
        method = None if count >= n else TopK(keep_ratio=(count - 0.5) / n, layers=(layer,))
        # patch(model, None) would apply the default method: the full count runs unpatched
        with torch.no_grad(), patch(model, method) if method else contextlib.nullcontext():
            for part in idx.split(250):
                logits = model(preprocess(images[part], model))
                right[part] = logits.argmax(dim=1) == labels[part]
    return right


def rule_counts(rule, scores: Tensor, keep: int, batch_size: int) -> Tensor:
    """(S,) tokens each input keeps under an adaptive ``rule`` (an ``AdaptiveRule``) when the
    inputs run in batches of ``batch_size``, each batch keeping ``keep`` per input on average."""
    every = torch.ones_like(scores, dtype=torch.bool)
    counts = [rule.counts(s, r, keep) for s, r in zip(scores.split(batch_size),
                                                      every.split(batch_size), strict=True)]  # fmt: skip
    return torch.tensor([c for batch in counts for c in batch])


def _data(train_size: int, test_size: int, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    from ..data.fashion_mnist import fashion_mnist

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split, size in (("train", train_size), ("test", test_size)):
        images, labels = fashion_mnist(split)
        pick = torch.randperm(len(images), generator=gen)[:size]
        out[split] = images[pick], labels[pick]
    return out


def _policy_row(policy: LevelPolicy, features: Tensor, outcomes: Tensor, n: int) -> dict:
    chosen = policy.choose(features)
    kept = torch.tensor([math.ceil(x * n) for x in policy.levels])[chosen]
    share = torch.bincount(chosen, minlength=len(policy.levels)) / len(chosen)
    return {"accuracy": float(outcomes[torch.arange(len(chosen)), chosen].float().mean()),
            "mean_tokens": float(kept.float().mean()), "price": policy.price,
            "level_shares": [round(float(x), 4) for x in share]}  # fmt: skip


def experiment(out: Path, *, train_size: int, test_size: int, layer: int, alpha: float,
               steps: int, targets: tuple[float, ...], batch_size: int, seed: int) -> dict:  # fmt: skip
    """Train a policy per target mean keep ratio on ``train_size`` training images and compare
    it on ``test_size`` test images, at equal mean tokens, with the uniform budget and the
    adaptive rules ``entropy``, ``iqr`` and ``policy`` (the policy's levels as weights of a
    batch's shared total); ``topk`` at block ``layer`` of the demo ViT. Writes
    ``results.json`` and ``policy-<percent>.json`` under ``out``; returns the results."""
    from ..assets import load
    from ..core.adaptive import AdaptiveRule, budget_features

    model, data = load("fmnist-vit").eval(), _data(train_size, test_size, seed)
    n, results = model.patch_embed.num_patches, {"rows": []}
    scores, features, outcomes = {}, {}, {}
    for split, (images, labels) in data.items():
        scores[split] = site_scores(model, images, layer)
        features[split] = torch.stack([budget_features(s) for s in scores[split]])
        outcomes[split] = torch.stack([
            correct_at_counts(model, images, labels, layer, torch.full((len(images),), math.ceil(x * n)))
            for x in LEVELS], dim=1)  # fmt: skip
    for target in targets:
        keep = math.ceil(target * n)
        trained = train_bandit(features["train"], outcomes["train"], n_target=target, alpha=alpha,
                               steps=steps, seed=seed, checkpoint=out / f"bandit-{target:.0%}.json")  # fmt: skip
        policy = calibrate(trained, features["train"], target)
        policy.save(out / f"policy-{target:.0%}.json")
        rows = {"uniform": {"accuracy": float(correct_at_counts(
            model, *data["test"], layer, torch.full((test_size,), keep)).float().mean()),
            "mean_tokens": float(keep)}}  # fmt: skip
        rows["policy (levels)"] = _policy_row(policy, features["test"], outcomes["test"], n)
        for name, rule in (("entropy", AdaptiveRule("entropy")), ("iqr", AdaptiveRule("iqr")),
                           ("policy (weights)", AdaptiveRule("policy", policy=str(out / f"policy-{target:.0%}.json")))):  # fmt: skip
            counts = rule_counts(rule, scores["test"], keep, batch_size)
            right = correct_at_counts(model, *data["test"], layer, counts)
            rows[name] = {
                "accuracy": float(right.float().mean()),
                "mean_tokens": float(counts.float().mean()),
            }
        results["rows"].append({"target_keep_ratio": target, "tokens": n, **rows})
    results["levels_test_accuracy"] = [float(x) for x in outcomes["test"].float().mean(dim=0)]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m tokenreduce.train.budget_policy --out DIR``: run :func:`experiment`."""
    import argparse

    parser = argparse.ArgumentParser(description=experiment.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/budget-policy"))
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--layer", type=int, default=3, help="the block topk prunes at")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="reward per unit keep ratio off target"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batch-size", type=int, default=64, help="batch of the adaptive rules")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = experiment(args.out, train_size=args.train_size, test_size=args.test_size,
                         layer=args.layer, alpha=args.alpha, steps=args.steps,
                         targets=tuple(args.targets), batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
