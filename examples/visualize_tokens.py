"""Draw which patches five reduction methods keep, drop and merge on one photo.

    .venv/bin/python examples/visualize_tokens.py [--out tokens.png] [--checkpoint vit.safetensors]

Uses scikit-image's astronaut photo (offline) and timm's ``vit_small_patch16_224``. Without
``--checkpoint`` the ViT has random weights (no pretrained weights are downloaded), so the
maps show each method's mechanics rather than what a trained model attends to: ToMe still
merges patches that look alike (the patch embedding is a linear map of the pixels), while
EViT's and top-k's class-token attention is essentially arbitrary. Pass a safetensors state
dict of a trained ``vit_small_patch16_224`` to see the trained behaviour.
"""

from __future__ import annotations

import argparse

import numpy as np
import timm
import torch
from PIL import Image
from skimage import data

import tokenreduce
from tokenreduce.viz import grid_figure, token_map

METHODS = {
    "tome r=13": "tome:r=13",
    "evit keep 0.7": "evit:keep_ratio=0.7",
    "topk keep 0.7": "topk:keep_ratio=0.7",
    "random keep 0.7": "random:keep_ratio=0.7",
    "pool 2x2 @ block 4": "pool:kernel=2",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="visualize_tokens.png", help="PNG file to write")
    parser.add_argument("--checkpoint", help="safetensors state dict for vit_small_patch16_224")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    if args.checkpoint:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.checkpoint))

    photo = Image.fromarray(data.astronaut())  # 512 x 512 RGB
    x = torch.from_numpy(np.array(photo.resize((224, 224), Image.Resampling.BICUBIC)))
    x = x.permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (x - mean) / std

    maps, titles = [photo], ["input"]
    for title, spec in METHODS.items():
        with tokenreduce.patch(model, spec) as handle, torch.no_grad():
            model(x[None])
        # The handle keeps the last forward's trace after the model is restored. Patch
        # boundaries are placed proportionally, so the map is drawn on the full-size photo.
        info = handle.info
        maps.append(token_map(photo, handle.state, info.grid, info.num_prefix))
        titles.append(f"{title} ({handle.trace.mlp_tokens[-1]} tokens)")
    grid_figure(maps, titles, columns=3).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
