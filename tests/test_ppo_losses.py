"""PPO's pure loss functions against hand computations."""

import math

import pytest
import torch

from lit_llm.losses import gae, kl_penalty, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss


def test_gae_matches_a_hand_computed_example() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last position is padding: its reward and value must not count
    gamma, lam = 0.9, 0.8
    d2 = 1.0 + 0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]]))


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]]))
    torch.testing.assert_close(advantages, returns - values)


def test_policy_loss_before_the_first_update_has_ratio_one_and_no_clipping() -> None:
    logprobs = torch.randn(3, 5)
    advantages = torch.randn(3, 5)
    loss, clipped = ppo_policy_loss(logprobs, logprobs.clone(), advantages, clip_range=0.2)
    torch.testing.assert_close(loss, -advantages)
    assert not clipped.any()


def test_policy_loss_clips_by_hand() -> None:
    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    advantages = torch.tensor([[1.0, -1.0]])
    loss, clipped = ppo_policy_loss(new, old, advantages, clip_range=0.2)
    # A>0, ratio 1.5: max(-1.5, -1.2) = -1.2 (clipped); A<0, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8]]))
    assert clipped.all()


def test_value_loss_clips_by_hand() -> None:
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[1.0, 1.0]])
    loss = ppo_value_loss(values, old, returns, clip_range=0.2)
    # first: unclipped 0, clipped V=0.2 → (0.8)² → ½·0.64; second: (0.9)² both ways → ½·0.81
    torch.testing.assert_close(loss, torch.tensor([[0.32, 0.405]]))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_are_zero_when_policy_equals_reference(estimator: str) -> None:
    logprobs = torch.randn(2, 4)
    assert torch.count_nonzero(kl_penalty(logprobs, logprobs, estimator)) == 0


def test_kl_estimators_by_hand_and_k3_unbiased() -> None:
    d = torch.tensor([[0.5]])
    assert kl_penalty(d, torch.zeros(1, 1), "k1").item() == pytest.approx(0.5)
    assert kl_penalty(d, torch.zeros(1, 1), "k2").item() == pytest.approx(0.125)
    assert kl_penalty(d, torch.zeros(1, 1), "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    # Monte-Carlo: the mean of k1 and k3 over samples of p estimates KL(p‖q) of two categoricals.
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[samples][None], q.log()[samples][None]
    exact = (p * (p / q).log()).sum().item()
    assert kl_penalty(lp, lq, "k1").mean().item() == pytest.approx(exact, abs=5e-3)
    assert kl_penalty(lp, lq, "k3").mean().item() == pytest.approx(exact, abs=5e-3)
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(lp, lq, "k4")


def test_masked_mean_and_whiten_ignore_padding() -> None:
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(whitened, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    assert masked_mean(torch.ones(1, 2), torch.zeros(1, 2)).item() == 0.0
