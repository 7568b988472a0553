"""dit-fmnist: an offline diffusion model, a class-conditional diffusers ``DiTTransformer2DModel``
trained on Fashion-MNIST in pixel space.

Geometry: 28 x 28 grey images (Fashion-MNIST's own size, scaled to [-1, 1]) cut into 2 x 2
patches give a 14 x 14 grid of 196 tokens (as many as ViT-B/16 at 224 px), which 2 x 2 merge
cells divide. Width 128 (4 heads of 32), 4 blocks with adaLN-Zero conditioning on the timestep
and the class; class index 10 is the null class of classifier-free guidance (diffusers'
``LabelEmbedding`` adds that row), and training drops the class 10 % of the time.

Noise: diffusers' ``DDPMScheduler``, 1000 steps, cosine schedule (``squaredcos_cap_v2``),
epsilon prediction. Sampling: ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 2, dynamic
thresholding) from the same configuration, by default 20 steps with guidance 3. diffusers' ``DiTPipeline`` does not
fit (it needs a VAE and a 1000-class null label), so :func:`generate` is a short loop over
``scheduler.step``.

>>> dit = tokenreduce.assets.load("dit-fmnist")
>>> images = dit.generate([0, 7, 9], generator=torch.Generator().manual_seed(0))  # (3, 28, 28) uint8

Train (resumable; progress lines; ``eval`` measures class consistency with the demo ViT)::

    python -m tokenreduce.assets dit-fmnist train --out runs/dit-fmnist --steps 4000 --seed 0
    python -m tokenreduce.assets dit-fmnist eval --checkpoint runs/dit-fmnist
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import register
from .training import run_steps

IMAGE_SIZE = 28
PATCH_SIZE = 2
GRID = IMAGE_SIZE // PATCH_SIZE
TOKENS = GRID * GRID
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the extra row diffusers' LabelEmbedding adds for dropped labels
BUNDLED = Path(__file__).parent / "checkpoints" / "dit-fmnist.safetensors"
DEFAULT_ARCH: dict[str, Any] = {
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 4,
    "sample_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_num_groups": 1,
}
NOISE_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": False,
}
DEFAULT_STEPS = 20
WEIGHTS_FILE = "model.safetensors"  # a training folder: raw weights
EMA_FILE = "ema.safetensors"  # ... and their exponential moving average, which samples better
DEFAULT_GUIDANCE = 3.0


@dataclass
class DiTFashionMNIST:
    """The trained model and its sampling scheduler; ``generate`` draws images.

    ``transformer`` is a ``diffusers.DiTTransformer2DModel`` in eval mode (patch it with
    ``tokenreduce.patch``), ``scheduler`` a ``DPMSolverMultistepScheduler``; ``info`` holds
    the checkpoint's metadata (training step, seed)."""

    transformer: Any
    scheduler: Any
    info: dict[str, Any]

    def generate(
        self,
        labels: Sequence[int] | Any,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        generator: Any = None,
    ) -> Any:
        """See :func:`generate`."""
        return generate(self.transformer, self.scheduler, labels, steps, guidance, generator)


def build(arch: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """An untrained ``DiTTransformer2DModel`` of ``arch`` (default ``DEFAULT_ARCH``), its
    weights initialised from ``seed``."""
    import torch
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiTTransformer2DModel(**{**DEFAULT_ARCH, **(arch or {})})
    return model.eval()


def noise_scheduler() -> Any:
    """The training scheduler: ``DDPMScheduler`` with ``NOISE_CONFIG``."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_CONFIG)


def sampling_scheduler() -> Any:
    """The sampling scheduler: DPM-Solver++ (order 2) on the training noise schedule, with
    dynamic thresholding of its clean-image predictions to [-1, 1]."""
    from diffusers import DPMSolverMultistepScheduler

    # Why thresholding: at the first steps the cosine schedule's signal is tiny, so the
    # clean image predicted from the noise estimate is far outside [-1, 1]; unthresholded,
    # DPM-Solver++ carries that into saturated, speckled samples (Saharia et al., 2022, use
    # dynamic thresholding for pixel-space guidance for the same reason). from_config keeps
    # the noise schedule and drops what only DDPM knows (clip_sample).
    return DPMSolverMultistepScheduler.from_config(
        noise_scheduler().config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
    )


def to_model_space(images: Any) -> Any:
    """uint8 images (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1], the model's pixel space."""
    import torch

    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def to_uint8(x: Any) -> Any:
    """Model space (N, 1, H, W) in [-1, 1] (clipped) -> uint8 images (N, H, W)."""
    import torch

    return x.squeeze(1).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def _check_labels(labels: Any) -> Any:
    import torch

    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("labels is empty: give at least one class index in 0..9")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.numel():
        raise ValueError(f"labels {bad.tolist()} are not Fashion-MNIST classes; allowed: 0..9")
    return labels


def initial_noise(n: int, generator: Any = None, device: Any = "cpu") -> Any:
    """Gaussian noise (n, 1, 28, 28): from one ``torch.Generator`` for the batch, or from a
    list of n generators, one per sample (then a sample's noise does not depend on its
    batch)."""
    import torch

    shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} labels: give one per label")
        return torch.stack([torch.randn(shape, generator=g) for g in generator]).to(device)
    return torch.randn((n, *shape), generator=generator).to(device)


def generate(
    model: Any,
    scheduler: Any,
    labels: Sequence[int] | Any,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    generator: Any = None,
) -> Any:
    """Sample one image per class label: uint8 images (N, 28, 28), Fashion-MNIST's layout.

    ``labels``: N class indices in 0..9. ``steps``: sampling steps of ``scheduler`` (>= 1).
    ``guidance``: classifier-free guidance scale (>= 0; 1 is the plain conditional model and
    runs one forward per step instead of two). ``generator``: a ``torch.Generator`` or a list
    of N of them (see :func:`initial_noise`). Deterministic given the initial noise: the
    solver adds no noise. Raises ValueError on bad labels, steps or guidance."""
    import torch

    labels = _check_labels(labels)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: give an integer >= 1")
    if not guidance >= 0:
        raise ValueError(f"guidance={guidance!r}: give a scale >= 0 (1 = no guidance)")
    device = next(model.parameters()).device
    x = initial_noise(len(labels), generator, device)
    guided = guidance != 1.0
    classes = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if guided else labels
    classes = classes.to(device)
    scheduler.set_timesteps(steps, device=device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            eps = model(x_in, timestep=t.expand(len(x_in)), class_labels=classes).sample
            if guided:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = scheduler.step(eps, t, x).prev_sample
    return to_uint8(x.cpu())


def save(model: Any, file: str | Path, info: dict[str, Any]) -> None:
    """Write ``model``'s weights with its architecture and ``info`` (metadata) to safetensors."""
    from safetensors.torch import save_file

    arch = {k: model.config[k] for k in DEFAULT_ARCH}
    meta = {"arch": json.dumps(arch), "info": json.dumps(info)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(file), metadata=meta)


def read(file: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, info) from a file written by :func:`save`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if "arch" not in meta:
        raise ValueError(f"{file} is not a dit-fmnist checkpoint (no 'arch' in its metadata)")
    model = build(json.loads(meta["arch"]))
    model.load_state_dict(load_file(str(file)), strict=True)
    return model.eval(), json.loads(meta.get("info", "{}"))


def load(checkpoint: str | Path | None = None) -> DiTFashionMNIST:
    """The trained model from ``checkpoint`` (a weights file, or a training folder whose EMA
    weights are used), by default the bundled one. Raises FileNotFoundError when absent."""
    file = Path(checkpoint) if checkpoint is not None else BUNDLED
    if file.is_dir():
        file = file / EMA_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"dit-fmnist checkpoint {file} is missing; reinstall tokenreduce or train one "
            "with `python -m tokenreduce.assets dit-fmnist train --out DIR --steps N`"
        )
    model, info = read(file)
    return DiTFashionMNIST(model, sampling_scheduler(), info)


@register(
    "dit-fmnist",
    f"diffusers DiTTransformer2DModel, class-conditional, 28x28 Fashion-MNIST in pixel space, "
    f"patch 2 ({TOKENS} tokens), 4 blocks; DPM-Solver++ sampling; bundled",
)
def _dit_fmnist(checkpoint: str | Path | None = None) -> DiTFashionMNIST:
    return load(checkpoint)


# --- training ------------------------------------------------------------------------------

LABEL_DROP = 0.1  # share of training examples whose class is replaced by the null class
TRAIN_COMMAND = "python -m tokenreduce.assets dit-fmnist train --out DIR --steps N --seed S"


@dataclass(frozen=True)
class TrainOptions:
    """A training run. ``out`` holds its checkpoint; a run resumes from it when the options
    that shape the result (all but ``steps``, ``out`` and the logging/saving intervals) match.
    ``lr`` is reached after ``warmup`` steps and then held (the EMA does the averaging)."""

    out: Path
    steps: int
    seed: int = 0
    batch_size: int = 32
    lr: float = 8e-4
    warmup: int = 200
    ema_decay: float = 0.998
    save_every: int = 200
    log_every: int = 20
    command: str = ""  # recorded in state.json for the model card

    def run_key(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup": self.warmup,
            "ema_decay": self.ema_decay,
            "arch": DEFAULT_ARCH,
            "noise": NOISE_CONFIG,
            "data": "fashion-mnist train (60000)",
        }


def training_batch(
    images: Any, labels: Any, step: int, seed: int, batch_size: int, timesteps: int
) -> tuple[Any, Any, Any, Any]:
    """(clean images (B, 1, 28, 28), classes with ~10 % nulls (B,), timesteps (B,), noise) of
    ``step``: a function of ``(seed, step)`` only, so a resumed run sees the batches an
    uninterrupted one would."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(int(np.random.default_rng([seed, step]).integers(2**62)))
    index = torch.randint(len(images), (batch_size,), generator=g)
    classes = labels[index].clone()
    classes[torch.rand(batch_size, generator=g) < LABEL_DROP] = NULL_CLASS
    t = torch.randint(0, timesteps, (batch_size,), generator=g)
    clean = to_model_space(images[index])
    return clean, classes, t, torch.randn(clean.shape, generator=g)


def _update_ema(ema: Any, model: Any, decay: float, step: int) -> None:
    import torch

    # Warm-up of the decay (as diffusers' EMAModel): early weights are forgotten quickly.
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def _save_checkpoint(
    model: Any, ema: Any, optimizer: Any, opts: TrainOptions, step: int, seconds: float
) -> None:
    """model/ema safetensors, optimizer.pt (``torch.load(weights_only=True)`` reads it) and
    state.json, written last: a checkpoint is the step state.json names."""
    import torch

    opts.out.mkdir(parents=True, exist_ok=True)
    tmp = opts.out / "optimizer.pt.tmp"
    torch.save(optimizer.state_dict(), tmp)
    tmp.replace(opts.out / "optimizer.pt")
    info = {"step": step, "seed": opts.seed}
    save(model, opts.out / WEIGHTS_FILE, {**info, "ema": False})
    save(ema, opts.out / EMA_FILE, {**info, "ema": True, "ema_decay": opts.ema_decay})
    state = {
        "step": step,
        "steps": opts.steps,
        "train_seconds": seconds,
        "run": opts.run_key(),
        "command": opts.command,
    }
    tmp = opts.out / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(opts.out / "state.json")


def _resume(model: Any, ema: Any, optimizer: Any, opts: TrainOptions) -> tuple[int, float]:
    """(step, training seconds so far) from ``opts.out``'s checkpoint, else (0, 0.0). Raises
    ValueError when the checkpoint belongs to a run with other options, RuntimeError when its
    files disagree on the step."""
    import torch

    state_file = opts.out / "state.json"
    if not state_file.is_file():
        return 0, 0.0
    state = json.loads(state_file.read_text())
    key = json.loads(json.dumps(opts.run_key()))  # as state.json stores it (lists, not tuples)
    if state["run"] != key:
        raise ValueError(
            f"{opts.out} holds a run with {state['run']}, not {key}: resume with "
            "the same options or choose another --out"
        )
    for target, name in ((model, WEIGHTS_FILE), (ema, EMA_FILE)):
        weights, info = read(opts.out / name)
        if info.get("step") != state["step"]:
            raise RuntimeError(
                f"{opts.out / name} is at step {info.get('step')}, state.json at "
                f"{state['step']} (interrupted while saving); delete the folder"
            )
        target.load_state_dict(weights.state_dict())
    optimizer.load_state_dict(torch.load(opts.out / "optimizer.pt", weights_only=True))
    return state["step"], state["train_seconds"]


def _train_step(model: Any, ema: Any, optimizer: Any, data: tuple, opts: TrainOptions, step: int):
    import torch

    noise_sched = data[2]
    clean, classes, t, noise = training_batch(
        data[0], data[1], step, opts.seed, opts.batch_size, noise_sched.config.num_train_timesteps
    )
    noisy = noise_sched.add_noise(clean, noise, t)
    for group in optimizer.param_groups:
        group["lr"] = opts.lr * min(1.0, (step + 1) / opts.warmup)
    predicted = model(noisy, timestep=t, class_labels=classes).sample
    loss = torch.nn.functional.mse_loss(predicted, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    _update_ema(ema, model, opts.ema_decay, step)
    return float(loss.detach())


def train(opts: TrainOptions, log: Any = print) -> dict[str, Any]:
    """Train a model on Fashion-MNIST's training split up to ``opts.steps``, resuming from
    ``opts.out``; ``log`` gets a progress line every ``opts.log_every`` steps. Returns
    ``{"step", "train_seconds", "seconds_per_step"}`` (seconds of this session)."""
    import copy

    import torch

    from ..data.fashion_mnist import fashion_mnist

    images, labels = fashion_mnist("train")
    data = (images, labels, noise_scheduler())
    model = build(seed=opts.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
    step, seconds = _resume(model, ema, optimizer, opts)
    # eval mode: DiT has no dropout; class dropping is ours, seeded
    return run_steps(
        step, opts.steps, seconds,
        lambda i: _train_step(model, ema, optimizer, data, opts, i),
        lambda i, secs: _save_checkpoint(model, ema, optimizer, opts, i, secs),
        log_every=opts.log_every, save_every=opts.save_every, log=log,
    )  # fmt: skip


# --- evaluation ----------------------------------------------------------------------------


def classifier_outputs(classifier: Any, images: Any, batch_size: int = 256) -> tuple[Any, Any]:
    """``(features (N, D), predicted classes (N,))`` of the demo ViT (``assets.load(
    "fmnist-vit")``) on uint8 images (N, 28, 28), preprocessed as its ``pretrained_cfg`` asks
    (56 x 56, normalised); the features are its pooled embedding (the class token after the
    final norm, before the head), the feature space of a Frechet distance."""
    import torch

    from ..data.fashion_mnist import preprocess

    features, predicted = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            tokens = classifier.forward_features(preprocess(images[i : i + batch_size], classifier))
            pooled = classifier.forward_head(tokens, pre_logits=True)
            features.append(pooled)
            predicted.append(classifier.head(pooled).argmax(-1))
    return torch.cat(features), torch.cat(predicted)


def sample_grid(images: Any, columns: int) -> Any:
    """uint8 images (N, H, W) tiled row by row into one uint8 array (rows * H, columns * W);
    missing cells at the end are black."""
    import numpy as np

    images = np.asarray(images)
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return grid


def class_consistency(
    dit: DiTFashionMNIST,
    per_class: int = 20,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    batch_size: int = 50,
) -> tuple[dict[str, Any], Any]:
    """Sample ``per_class`` images of every class (sample i seeded with ``seed + i``) and
    measure how many the demo ViT assigns to their class. Returns (``{"n", "accuracy",
    "per_class": [10 accuracies], "steps", "guidance"}``, images (N, 28, 28) uint8 ordered
    class by class)."""
    import torch

    from . import load as load_asset

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    images = []
    for i in range(0, len(labels), batch_size):
        chunk = labels[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images.append(dit.generate(chunk, steps, guidance, gens))
    images = torch.cat(images)
    right = classifier_outputs(load_asset("fmnist-vit"), images)[1] == labels
    result = {
        "n": len(labels),
        "accuracy": float(right.float().mean()),
        "per_class": [float(right[labels == c].float().mean()) for c in range(NUM_CLASSES)],
        "steps": steps,
        "guidance": guidance,
    }
    return result, images


# --- command line --------------------------------------------------------------------------


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokenreduce.assets dit-fmnist")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or resume) the model")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    tr.add_argument("--steps", type=int, required=True, help="total steps (resumes below it)")
    tr.add_argument("--seed", type=int, default=0, help="initialisation and batches")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=8e-4, help="learning rate after warm-up")
    tr.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    tr.add_argument("--ema-decay", type=float, default=0.998)
    tr.add_argument("--save-every", type=int, default=200)
    tr.add_argument("--log-every", type=int, default=20)
    ev = sub.add_parser("eval", help="class consistency of samples, and a sample grid PNG")
    ev.add_argument("--checkpoint", type=Path, default=None, help="file or training folder")
    ev.add_argument("--per-class", type=int, default=20, help="samples of each class")
    ev.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="sampling steps")
    ev.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ev.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    ev.add_argument(
        "--grid", type=Path, default=None, help="PNG (default: in the training folder, else here)"
    )
    for p in (tr, ev):
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def model_card(result: dict[str, Any], state: dict[str, Any], command: str) -> str:
    """The model card (markdown) of a training folder's EMA weights: model, data, training
    (from ``state.json``) and the class consistency ``result`` of :func:`class_consistency`."""
    from ..data.fashion_mnist import LABELS

    run, seconds = state["run"], state["train_seconds"]
    lines = [
        "# dit-fmnist",
        "",
        f"diffusers `DiTTransformer2DModel`, class-conditional, in pixel space: 28x28 grey "
        f"Fashion-MNIST images in 2x2 patches, a {GRID}x{GRID} grid of {TOKENS} tokens; width "
        f"{DEFAULT_ARCH['num_attention_heads'] * DEFAULT_ARCH['attention_head_dim']} "
        f"({DEFAULT_ARCH['num_attention_heads']} heads), {DEFAULT_ARCH['num_layers']} blocks "
        "with adaLN-Zero on timestep and class; class 10 is the null class of classifier-free "
        f"guidance. Weights: the exponential moving average (decay {run['ema_decay']}).",
        "",
        "Noise: `DDPMScheduler`, 1000 steps, cosine schedule, epsilon prediction. Sampling: "
        "`DPMSolverMultistepScheduler` (DPM-Solver++, order 2, dynamic thresholding), "
        f"{DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE}.",
        "",
        "## Data and training",
        "",
        "- Fashion-MNIST training split (60,000 images), pixels scaled to [-1, 1], no "
        f"augmentation; {LABEL_DROP:.0%} of the classes replaced by the null class",
        f"- trained by: `{state.get('command') or 'unknown'}`",
        f"- steps: {state['step']}, batch {run['batch_size']}, AdamW lr {run['lr']} after "
        f"{run['warmup']} warm-up steps, gradient norm clipped at 1, seed {run['seed']}",
        f"- training time: {seconds / 60:.0f} min on one CPU thread "
        f"({seconds / max(1, state['step']):.2f} s/step)",
        "",
        "## Class consistency",
        "",
        f"The demo ViT (`fmnist-vit`) assigns **{result['accuracy']:.1%}** of {result['n']} "
        f"samples ({result['n'] // NUM_CLASSES} per class, sample i seeded with i, "
        f"{result['steps']} steps, guidance {result['guidance']}) to the class they were "
        f"conditioned on (evaluated by `{command}`).",
        "",
        "| class | consistency |",
        "|---|---:|",
        *(f"| {name} | {a:.0%} |" for name, a in zip(LABELS, result["per_class"], strict=True)),
        "",
    ]
    return "\n".join(lines)


def _evaluate(args: Any, command: str) -> None:
    from PIL import Image

    dit = load(args.checkpoint)
    result, images = class_consistency(dit, args.per_class, args.steps, args.guidance, args.seed)
    result["checkpoint"] = dit.info
    per_class = " ".join(f"{a:.0%}" for a in result["per_class"])
    print(
        f"step {dit.info.get('step')}: class consistency {result['accuracy']:.1%} "
        f"of {result['n']} (per class: {per_class})",
        flush=True,
    )
    # a training folder gets the results; a weights file (the bundled one) is left alone
    folder = Path(args.checkpoint) if args.checkpoint is not None else None
    folder = folder if folder is not None and folder.is_dir() else None
    grid = args.grid or (folder or Path.cwd()) / f"samples-step{dit.info.get('step')}.png"
    Image.fromarray(sample_grid(images.numpy(), args.per_class)).save(grid)
    print(f"wrote {grid}", flush=True)
    if folder is not None:
        (folder / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
        state = json.loads((folder / "state.json").read_text())
        (folder / "MODEL_CARD.md").write_text(model_card(result, state, command))
        print(f"wrote {folder / 'eval.json'} and {folder / 'MODEL_CARD.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``train`` or ``eval`` (see ``--help``)."""
    from .commands import parse

    args, command = parse(_parser(), "dit-fmnist", argv)
    if args.command == "eval":
        return _evaluate(args, command)
    opts = TrainOptions(
        args.out,
        args.steps,
        args.seed,
        args.batch_size,
        args.lr,
        args.warmup,
        args.ema_decay,
        args.save_every,
        args.log_every,
        command,
    )
    result = train(opts, log=lambda s: print(s, flush=True))
    print(
        f"trained to step {result['step']} in {result['train_seconds'] / 60:.1f} min; "
        f"checkpoint in {opts.out}",
        flush=True,
    )
