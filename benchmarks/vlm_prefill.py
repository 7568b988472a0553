"""Time to first token of llava-shapes with its image tokens reduced at the handoff.

The language model's prefill (the forward that reads the prompt and fills the cache) and the
first generated token are timed for each configuration, paired with the unreduced model in
the same run (alternating, median of ``--repeats`` pairs; ratio = unreduced / reduced time, so
> 1 is faster), on ``--batch`` seeded scene questions (64 image tokens each, 112 px). Speed
does not depend on the projector's weights, so ``--untrained`` times the model before its
projector is trained (stated in the output).

Run: ``.venv/bin/python benchmarks/vlm_prefill.py --threads 2 --repeats 7``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tokenreduce
from tokenreduce.assets import llava_shapes
from tokenreduce.data.vqa import scenes_vqa
from tokenreduce.methods import TokenMethod, get

CONFIGS = [f"{m}:keep_ratio={k},layers=[0]" for k in (0.5, 0.25, 0.11)
           for m in ("visionzip", "divprune", "downsample", "random", "topk")]  # fmt: skip
CONFIGS += [f"fastv:prune_ratio={p},layer=2" for p in (0.5, 0.75, 0.89)]


def first_token(model, inputs: dict) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    return time.perf_counter() - start


def paired(model, inputs: dict, spec: str, repeats: int) -> tuple[float, int]:
    """(median unreduced / reduced time to first token, prompt tokens the LM ran on)."""
    ratios = []
    for _ in range(repeats):
        base = first_token(model, inputs)
        with tokenreduce.patch(model, spec) as handle:
            reduced = first_token(model, inputs)
            kept = handle.trace.prefill_kept
        ratios.append(base / reduced)
    tokens = int((kept[-1] >= 0).sum(1).float().mean()) if kept else 0
    return statistics.median(ratios), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--untrained", action="store_true", help="time the untrained projector")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = llava_shapes.load(untrained=args.untrained)
    data = scenes_vqa("test", 16, seed=0)
    images = [data.images[i] for i in data.image_index[: args.batch]]
    inputs = llava_shapes.encode(processor, images, list(data.questions[: args.batch]))
    inputs.pop("position_ids", None)
    full = int(inputs["attention_mask"].sum(1).float().mean())
    first_token(model, inputs)  # warm-up
    weights = "untrained projector (speed only)" if args.untrained else "trained projector"
    print(f"llava-shapes, {weights}; batch {args.batch}, {args.threads} threads; "
          f"prompt {full} tokens of which 64 image tokens")  # fmt: skip
    print(f"{'configuration':42s} {'LM tokens':>9s} {'TTFT speed-up':>13s}")
    for spec in CONFIGS:
        assert issubclass(get(spec.split(":")[0]), TokenMethod) or spec.startswith("fastv")
        ratio, tokens = paired(model, inputs, spec, args.repeats)
        print(f"{spec:42s} {tokens:9d} {ratio:12.2f}x", flush=True)


if __name__ == "__main__":
    main()
