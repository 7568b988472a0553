"""Budgets learned by reward: the reward, the bandit, calibration, and the ``policy`` rule."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.adaptive import BUDGET_FEATURES, AdaptiveRule, LevelPolicy, budget_features
from tokenreduce.train.budget_policy import LEVELS, calibrate, mean_level, reward, train_bandit


def test_reward_hand_made_cases():
    correct = torch.tensor([True, True, False, False])
    n = torch.tensor([0.5, 1.0, 0.25, 0.5])
    got = reward(correct, n, n_target=0.5, alpha=2.0)
    assert got.tolist() == pytest.approx([1.0, 0.0, -0.5, 0.0])
    # alpha 0 rewards correctness alone
    assert reward(correct, n, 0.5, 0.0).tolist() == [1.0, 1.0, 0.0, 0.0]


def synthetic_bandit(size: int = 2000, seed: int = 0):
    """Feature 0 decides the level: above 0.5 an input needs the top level, else the lowest
    is enough; the other features are noise."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(size, len(BUDGET_FEATURES), generator=gen)
    hard = features[:, 0] > 0.5
    needed = torch.where(hard, len(LEVELS) - 1, 0)
    outcomes = torch.arange(len(LEVELS))[None, :] >= needed[:, None]
    return features, outcomes, hard


def test_bandit_learns_the_deciding_feature():
    features, outcomes, hard = synthetic_bandit()
    policy = train_bandit(features, outcomes, n_target=0.25, alpha=0.5, steps=1500, seed=1)
    chosen = policy.choose(features)
    best = torch.where(hard, len(LEVELS) - 1, 0)
    assert (chosen == best).float().mean() > 0.85
    # an untrained policy (all values 0) picks the lowest level everywhere: far from it
    assert (torch.zeros_like(chosen) == best).float().mean() < 0.6


def test_chosen_levels_are_allowed():
    features, outcomes, _ = synthetic_bandit(300)
    levels = (0.3, 0.6, 0.9)
    policy = train_bandit(
        features, outcomes[:, :3], n_target=0.6, alpha=0.2, steps=50, levels=levels
    )
    chosen = policy.choose(features)
    assert set(chosen.tolist()) <= {0, 1, 2}
    assert AdaptiveRule("entropy")  # the rule vocabulary still holds its old rules
    assert policy.levels == levels


def test_seeded_and_resumable(tmp_path):
    features, outcomes, _ = synthetic_bandit(500)
    kw = {"n_target": 0.5, "alpha": 0.5, "seed": 3}
    whole = train_bandit(features, outcomes, steps=200, **kw)
    again = train_bandit(features, outcomes, steps=200, **kw)
    assert torch.equal(whole.weights, again.weights)
    file = tmp_path / "bandit.json"
    train_bandit(features, outcomes, steps=120, checkpoint=file, **kw)
    resumed = train_bandit(features, outcomes, steps=200, checkpoint=file, **kw)
    assert torch.allclose(resumed.weights, whole.weights, atol=1e-6)
    other = train_bandit(features, outcomes, steps=200, n_target=0.5, alpha=0.5, seed=4)
    assert not torch.equal(other.weights, whole.weights)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_calibration_lands_the_mean_budget(target):
    features, outcomes, _ = synthetic_bandit(1000)
    policy = train_bandit(features, outcomes, n_target=1.0, alpha=0.0, steps=300)
    assert mean_level(policy, features) > 0.75  # unpriced, it spends freely
    priced = calibrate(policy, features, target)
    mean = mean_level(priced, features)
    assert mean <= target + 1e-9
    # a little less price overshoots: the lowest price that fits, so the mean is as close
    # under the target as the levels allow
    cheaper = LevelPolicy(priced.levels, priced.weights, priced.price * 0.999)
    assert mean_level(cheaper, features) > target
    assert priced.price > 0


def test_calibration_subsidises_a_policy_that_spends_too_little():
    features, outcomes, _ = synthetic_bandit(1000)
    policy = train_bandit(features, outcomes, n_target=0.25, alpha=2.0, steps=300)
    assert mean_level(policy, features) < 0.4  # off target is dear: it stays low
    priced = calibrate(policy, features, 0.6)
    assert priced.price < 0
    assert 0.5 < mean_level(priced, features) <= 0.6


def test_policy_rule_reads_its_file(tmp_path):
    weights = torch.zeros(len(LEVELS), len(BUDGET_FEATURES) + 1)
    weights[-1, 0] = 1.0  # the top level's value grows with the attention's entropy
    weights[0, -1] = 0.5
    file = tmp_path / "policy.json"
    LevelPolicy(LEVELS, weights).save(file)
    flat, peaked = torch.ones(16), torch.tensor([10.0] + [0.01] * 15)
    assert budget_features(flat)[0] == pytest.approx(1.0)
    rule = AdaptiveRule("policy", policy=str(file))
    assert rule.estimate(flat) == 1.0 and rule.estimate(peaked) == 0.25
    counts = rule.counts(torch.stack([flat, peaked]), torch.ones(2, 16, dtype=torch.bool), 8)
    assert counts == [13, 3] and sum(counts) == 16


def test_policy_spec_builds_and_checks_its_file(tmp_path):
    from tokenreduce.methods import InvalidParameter, build

    file = tmp_path / "policy.json"
    LevelPolicy(LEVELS, torch.zeros(len(LEVELS), len(BUDGET_FEATURES) + 1)).save(file)
    method = build(f"topk:keep_ratio=0.5,adaptive=policy,adaptive_policy={file}")
    assert method.adaptive_rule == AdaptiveRule("policy", policy=str(file))
    with pytest.raises(InvalidParameter, match="does not exist"):
        build(f"topk:keep_ratio=0.5,adaptive=policy,adaptive_policy={tmp_path / 'none.json'}")
    with pytest.raises(InvalidParameter, match="None unless adaptive is 'policy'"):
        build(f"topk:keep_ratio=0.5,adaptive_policy={file}")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: reward(torch.ones(2), torch.ones(2), 0.5, -1.0), "alpha .* must be >= 0"),
        (lambda: reward(torch.ones(2), torch.ones(3), 0.5, 1.0), "must have one shape"),
        (
            lambda: train_bandit(
                torch.rand(4, 2), torch.ones(4, 4), n_target=0.5, alpha=1, steps=1
            ),
            "features must be",
        ),
        (
            lambda: train_bandit(
                torch.rand(4, 4), torch.ones(4, 3), n_target=0.5, alpha=1, steps=1
            ),
            "outcomes must be",
        ),
        (
            lambda: train_bandit(
                torch.rand(4, 4), torch.ones(4, 4), n_target=0.5, alpha=1, steps=1, epsilon=2.0
            ),
            "epsilon",
        ),
        (lambda: LevelPolicy((0.5, 0.25), torch.zeros(2, 5)), "increasing keep ratios"),
        (lambda: LevelPolicy((0.25, 0.5), torch.zeros(3, 5)), "must have shape"),
        (
            lambda: calibrate(LevelPolicy(LEVELS, torch.zeros(4, 5)), torch.rand(3, 4), 0.1),
            "target keep ratio",
        ),
        (lambda: budget_features(torch.ones(1)), "n >= 2"),
        (lambda: AdaptiveRule("policy"), "policy weights file"),
        (lambda: AdaptiveRule("entropy", policy="p.json"), "policy weights file"),
    ],
)
def test_bad_input_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_broken_policy_file_is_named(tmp_path):
    file = tmp_path / "bad.json"
    file.write_text('{"levels": [0.5]}')
    with pytest.raises(ValueError, match="bad.json is not a budget policy file"):
        LevelPolicy.load(file)
