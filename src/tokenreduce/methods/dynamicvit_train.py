"""Training DynamicViT's keep predictor (Rao et al., NeurIPS 2021, section 3.3).

During training no token is removed: each stage draws a hard keep/drop mask per token with
the Gumbel-softmax (straight-through, so the gradient reaches the predictor), multiplies it
into the previous stages' mask, and every later attention ignores the dropped tokens by
masking their keys inside the softmax (the paper's ``softmax_with_policy``; each token still
attends to itself so no row is empty). The loss (section 3.3, equation 14):

    L = CE + lambda_ratio * L_ratio + lambda_kl * KL + lambda_distill * L_distill

with L_ratio the squared gap between each stage's mean kept fraction and its target rho^s,
KL the divergence of the student's logits from the unreduced teacher's, and L_distill the
MSE between the student's and the teacher's final tokens where the student kept them.

The forward below runs a timm ``VisionTransformer`` (the demo ViT) block by block with that
masking; it follows timm 1.0's ``Block`` and ``Attention`` (pre-norm, fused qkv), the layout
the timm adapter patches at inference.

Command (seeded, resumes from ``--out``):

    python -m tokenreduce.methods.dynamicvit_train --steps 300 --out runs/dynamicvit
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dynamicvit import KeepPredictor

#: the paper's loss weights (section 4.1)
LAMBDA_RATIO, LAMBDA_KL, LAMBDA_DISTILL = 2.0, 0.5, 0.5


def masked_attention(attn: nn.Module, x: Tensor, policy: Tensor, eps: float = 1e-6) -> Tensor:
    """timm ``Attention`` over ``x`` (B, N, C) where key j counts only as much as
    ``policy[:, j]`` (B, N) in [0, 1] (the diagonal always counts): the paper's softmax with
    policy, exp(a_ij) G_j / sum_k exp(a_ik) G_k. Returns (B, N, C)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    g = policy[:, None, None, :] + (1 - policy[:, None, None, :]) * eye
    weights = torch.exp(logits - logits.amax(-1, keepdim=True)) * g
    weights = (weights + eps / n) / (weights.sum(-1, keepdim=True) + eps)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.proj_drop(attn.proj(attn.norm(out)))


def _stage_mask(stage: nn.Module, x: Tensor, policy: Tensor, prefix: int) -> Tensor:
    """The new (B, N) policy after one stage: patch tokens' hard Gumbel draw times the old
    policy (a dropped token stays dropped); prefix tokens (class) are always kept."""
    logits = stage(x[:, prefix:], policy[:, prefix:])
    keep = F.gumbel_softmax(logits, hard=True)[..., 0] * policy[:, prefix:]
    return torch.cat([policy[:, :prefix], keep], dim=1)


def forward_masked(model: nn.Module, predictor: KeepPredictor, layers: tuple[int, ...],
                   x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """The training forward of a timm ViT with ``predictor``'s stages after the attention of
    ``layers``. Returns logits (B, classes), final tokens (B, N, C) and each stage's policy
    (B, N), 1 = kept."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    prefix = model.num_prefix_tokens
    policy = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    policies = []
    for i, blk in enumerate(model.blocks):
        x = x + blk.drop_path1(blk.ls1(masked_attention(blk.attn, blk.norm1(x), policy)))
        if i in layers:
            policy = _stage_mask(predictor.stages[layers.index(i)], x, policy, prefix)
            policies.append(policy)
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    tokens = model.norm(x)
    return model.forward_head(tokens), tokens, policies


def ratio_loss(policies: list[Tensor], keep_ratio: float, prefix: int) -> Tensor:
    """Mean over stages s = 1.. of (rho^s - mean kept fraction of the patch tokens)^2, the
    fraction taken per sample (the paper's per-image ratio)."""
    gaps = [(p[:, prefix:].mean(1) - keep_ratio ** (s + 1)) ** 2 for s, p in enumerate(policies)]
    return torch.stack(gaps).mean()


def distill_losses(student_logits: Tensor, teacher_logits: Tensor, student_tokens: Tensor,
                   teacher_tokens: Tensor, policy: Tensor, prefix: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(KL(teacher || student) on the class distributions, batch mean; MSE between the final
    patch tokens where ``policy`` (B, N) keeps them, averaged over kept tokens and channels)."""
    kl = F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1),
                  reduction="batchmean", log_target=True)  # fmt: skip
    keep = policy[:, prefix:].unsqueeze(-1)
    sq = (student_tokens[:, prefix:] - teacher_tokens[:, prefix:]) ** 2 * keep
    mse = sq.sum() / (keep.sum() * sq.shape[-1]).clamp_min(1.0)
    return kl, mse


def dynamicvit_loss(model, teacher, predictor, layers, keep_ratio, x, y) -> Tensor:
    """The paper's total loss on one batch ``x`` (B, C, H, W), labels ``y`` (B,)."""
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_tokens)
    logits, tokens, policies = forward_masked(model, predictor, layers, x)
    prefix = model.num_prefix_tokens
    kl, mse = distill_losses(logits, t_logits, tokens, t_tokens, policies[-1], prefix)
    return (F.cross_entropy(logits, y) + LAMBDA_RATIO * ratio_loss(policies, keep_ratio, prefix)
            + LAMBDA_KL * kl + LAMBDA_DISTILL * mse)  # fmt: skip


def _batch(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    epoch, b = divmod(step, n // batch_size)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)[b * batch_size : (b + 1) * batch_size]


def train(model: nn.Module, images: Tensor, labels: Tensor, *, steps: int,
          keep_ratio: float = 0.7, layers: tuple[int, ...] = (3, 6, 9), lr: float = 1e-3,
          batch_size: int = 64, seed: int = 0, out: Path | None = None, every: int = 25,
          log=print) -> KeepPredictor:  # fmt: skip
    """Train a predictor for the frozen ``model`` (its own unreduced outputs are the teacher)
    on uint8 ``images`` (N, H, W) with int ``labels`` (N,) for ``steps`` batches; the batch
    order and the Gumbel draws follow ``seed``. With ``out``, a checkpoint every ``every``
    steps (``predictor.safetensors`` + ``state.pt``) and the run resumes from it; ``log``
    receives a progress line every 10 steps (None: silent)."""
    from ..data.fashion_mnist import preprocess

    log = log or (lambda line: None)
    torch.manual_seed(seed)
    model.eval().requires_grad_(False)  # eval: no dropout; the backbone stays as trained
    predictor = KeepPredictor(model.embed_dim, len(layers))
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.05)
    step = _resume(out, predictor, opt) if out is not None else 0
    while step < steps:
        idx = _batch(step, len(images), batch_size, seed)
        loss = dynamicvit_loss(model, model, predictor, layers, keep_ratio,
                               preprocess(images[idx], model), labels[idx])  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            log(f"step {step}/{steps} loss {loss.item():.4f}")
        if out is not None and (step % every == 0 or step == steps):
            _save(out, step, predictor, opt)
    return predictor.eval()


def _save(out: Path, step: int, predictor: KeepPredictor, opt) -> None:
    out.mkdir(parents=True, exist_ok=True)
    predictor.save(out / "predictor.safetensors", {"step": str(step)})
    torch.save({"step": step, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()},
               out / "state.pt")  # fmt: skip


def _resume(out: Path, predictor: KeepPredictor, opt) -> int:
    if not (out / "state.pt").is_file():
        return 0
    state = torch.load(out / "state.pt", weights_only=True)
    predictor.load_state_dict(KeepPredictor.load(out / "predictor.safetensors").state_dict())
    predictor.train()
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tokenreduce.methods.dynamicvit_train",
                                description="Train DynamicViT's predictor on the demo ViT.")  # fmt: skip
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--keep-ratio", type=float, default=0.7)
    p.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    from .. import assets
    from ..data.fashion_mnist import fashion_mnist

    if a.threads:
        torch.set_num_threads(a.threads)
    images, labels = fashion_mnist("train")
    train(assets.load("fmnist-vit"), images, labels, steps=a.steps, keep_ratio=a.keep_ratio,
          layers=tuple(a.layers), lr=a.lr, batch_size=a.batch_size, seed=a.seed, out=a.out)  # fmt: skip
    print(f"predictor: {a.out / 'predictor.safetensors'}")


if __name__ == "__main__":
    main()
