"""Sampling speed of the local-site (diffusion) methods on a tiny random SD-layout UNet.

A ``UNet2DConditionModel`` with Stable Diffusion 1.x's layout (three cross-attention stages
and one plain stage, one block per stage, narrow channels, random weights) samples 64x64
latents (4096 tokens at the highest resolution) with DDIM for ``--steps`` steps, attention
through PyTorch's SDPA (diffusers' default processor). For every registered local method
at three ratios, the unreduced and the reduced sampler run in alternation (paired), and the
reported figure is the median over ``--repeats`` pairs of unreduced time / reduced time: a
speed-up, > 1 is faster. Speed only: the weights are random, so no quality is measured.

    .venv/bin/python benchmarks/diffusion_unet_speed.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tokenreduce
from tokenreduce.adapters.diffusers.unet import tiny_unet
from tokenreduce.methods import LocalMethod, available, get

#: SD 1.x's UNet layout, narrow: cross-attention at levels 1, 2 and 4 and in the mid block
SD_LAYOUT = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "block_out_channels": (32, 64, 128, 128), "layers_per_block": 1, "norm_num_groups": 16,
    "cross_attention_dim": 64, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}  # fmt: skip
RATIOS = (0.3, 0.5, 0.7)


def sampler(model: torch.nn.Module, steps: int, batch: int):
    """A function running DDIM sampling of ``steps`` steps from fixed noise and text."""
    from diffusers import DDIMScheduler

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, 4, 64, 64, generator=g)
    text = torch.randn(batch, 77, SD_LAYOUT["cross_attention_dim"], generator=g)
    scheduler = DDIMScheduler(num_train_timesteps=1000)

    @torch.inference_mode()
    def sample() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        x = noise
        for t in scheduler.timesteps:
            eps = model(x, t, encoder_hidden_states=text).sample
            x = scheduler.step(eps, t, x).prev_sample
        return x

    return sample


def paired_speedup(model, spec: str, sample, repeats: int) -> float:
    """Median over ``repeats`` of unreduced time / reduced time, the two run back to back."""
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample()
        plain = time.perf_counter() - start
        with tokenreduce.patch(model, spec):
            start = time.perf_counter()
            sample()
            reduced = time.perf_counter() - start
        ratios.append(plain / reduced)
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--methods", default=None, help="comma-separated (every local method)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = tiny_unet(**SD_LAYOUT)
    sample = sampler(model, args.steps, args.batch)
    names = args.methods.split(",") if args.methods else [
        n for n in available() if issubclass(get(n), LocalMethod)]  # fmt: skip
    processor = type(model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor)
    print(f"UNet2DConditionModel, SD layout, 64x64 latents, {args.steps} DDIM steps, batch "
          f"{args.batch}, {args.threads} threads, {args.repeats} paired repeats; attention "
          f"processor {processor.__name__}; torch {torch.__version__}")  # fmt: skip
    sample()  # warm-up
    print("| method | " + " | ".join(f"ratio {r}" for r in RATIOS) + " |")
    print("|---|" + "---|" * len(RATIOS))
    for name in names:
        cells = [paired_speedup(model, f"{name}:ratio={r}", sample, args.repeats) for r in RATIOS]
        print(f"| `{name}` | " + " | ".join(f"{c:.2f}x" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
