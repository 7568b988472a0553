"""Train the bundled demo ViT (``tokenreduce.assets.load("fmnist-vit")``) on Fashion-MNIST.

Reproducible and seeded; runs on a CPU (``--device cuda`` where a GPU is available).
Training has two phases so that most steps are cheap. The first phase sees 56x56 inputs but
keeps only a random quarter of the 196 patch tokens per image (timm's patch dropout, as in
FLIP, Li et al. 2023), so a step costs about what a 49-token ViT costs while the patch
embedding and position embedding already work at the final scale. The second phase fine-tunes
with all 196 tokens, the way the model is used. (``--low-size 28 --patch-drop 0`` instead
trains the first phase at 28x28 and resamples the position embedding to 14x14 afterwards.)
Optimiser: AdamW, linear warm-up then cosine decay in each phase; label smoothing; optional
random-shift and horizontal-flip augmentation.

    python -m tokenreduce.train_demo --out runs/fmnist-vit
    python -m tokenreduce.train_demo --time-steps 5     # measure step times, then exit
    python -m tokenreduce.train_demo --evaluate runs/fmnist-vit/final.safetensors

``--init CHECKPOINT`` continues from saved weights (its metadata sets the architecture);
``--conv-stem C1 C2`` adds a zero-initialised convolutional branch to the patch embedding,
which lets each token see a little around its patch and speeds learning. The bundled
checkpoint was made by the sequence of commands listed in its model card
(``assets/checkpoints/fmnist-vit.md``).

Each epoch writes ``epoch-XX-*.safetensors`` and ``last.safetensors`` (weights + architecture
metadata) to ``--out``, so partial progress is usable; ``train.log`` records every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .assets import fmnist_vit
from .data.fashion_mnist import fashion_mnist


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tokenreduce.train_demo",
        description="Train the demo ViT (56x56, patch 4, 196+1 tokens) on Fashion-MNIST.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/fmnist-vit"), help="output folder")
    p.add_argument("--data", type=str, default=None, help="Fashion-MNIST folder (IDX .gz files)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", type=str, default="cpu")
    _add_model_args(p)
    _add_schedule_args(p)
    _add_data_and_mode_args(p)
    return p.parse_args(argv)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Architecture of a model trained from scratch."""
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument(
        "--conv-stem",
        type=int,
        nargs=2,
        default=None,
        metavar=("C1", "C2"),
        help="add a convolutional branch with these channels to the patch embedding",
    )


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
    """The two phases: input size, patch dropout, epochs, optimiser, averaging, augmentation."""
    p.add_argument("--low-size", type=int, default=56, help="input size of the first phase")
    p.add_argument(
        "--patch-drop", type=float, default=0.75, help="patch tokens dropped in the first phase"
    )
    p.add_argument("--low-epochs", type=float, default=3.0, help="epochs of the first phase")
    p.add_argument(
        "--high-epochs",
        type=float,
        default=0.25,
        help="epochs with all tokens at 56x56 (may be < 1)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, first phase")
    p.add_argument("--high-lr", type=float, default=5e-4, help="peak learning rate, 56x56 phase")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.3, help="warm-up length, in epochs")
    p.add_argument("--high-warmup", type=float, default=0.02, help="warm-up, 56x56 phase")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the weights with this decay and save it "
        "instead of the raw weights (0: off)",
    )
    p.add_argument("--shift", type=int, default=0, help="max random shift in pixels (0: off)")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal flips")


def _add_data_and_mode_args(p: argparse.ArgumentParser) -> None:
    """Data limits, checkpoints, the starting weights, and the evaluate and timing modes."""
    p.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    p.add_argument("--eval-limit", type=int, default=1000, help="test images per epoch log")
    p.add_argument("--checkpoints-per-epoch", type=int, default=1)
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this checkpoint (its metadata sets the architecture)",
    )
    p.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="only report this checkpoint's top-1 on the 10,000 test images, then exit",
    )
    p.add_argument("--time-steps", type=int, default=0, help="only time N steps per phase")


class Log:
    """Print and append to ``train.log`` with the elapsed wall time."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:8.1f}s] {msg}"
        print(line, flush=True)
        with open(self.file, "a") as f:
            f.write(line + "\n")


def augment(x: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (zero padding; the background is black) and horizontal flips, per image."""
    b, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w)
        x = padded[
            torch.arange(b).view(b, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols
        ]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(-1), x)
    return x


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 1, size, size); the same as ``preprocess``."""
    x = images.unsqueeze(1).float().div_(255.0)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - fmnist_vit.MEAN[0]) / fmnist_vit.STD[0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    device: str,
    bs: int = 500,
) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, len(images), bs):
        x = to_input(images[i : i + bs], size).to(device)
        correct += (model(x).argmax(-1).cpu() == labels[i : i + bs]).sum().item()
    model.train()
    return 100.0 * correct / max(1, len(images))


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, t)))


def grow(model: nn.Module, arch: dict, size: int, **build_kw) -> nn.Module:
    """A new model for ``size`` inputs with ``model``'s weights (position embedding resampled
    when the patch grid changes); ``build_kw`` go to ``fmnist_vit.build`` (patch dropout)."""
    from timm.layers import resample_abs_pos_embed

    big = fmnist_vit.build(arch, img_size=size, **build_kw)
    state = model.state_dict()
    grid = big.patch_embed.grid_size
    if tuple(grid) != tuple(model.patch_embed.grid_size):
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(grid), num_prefix_tokens=big.num_prefix_tokens
        )
    missing, unexpected = big.load_state_dict(state, strict=False)
    # Only a newly added convolutional branch may be absent from the source weights.
    missing = [k for k in missing if not k.startswith("patch_embed.local.")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return big


def make_optimizer(model: nn.Module, wd: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases, norms and embeddings (the usual ViT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel is several times faster on CPU for many small tensors
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, betas=(0.9, 0.999))


@dataclass
class _Phase:
    """What one training phase needs to log, evaluate and save its checkpoints."""

    args: argparse.Namespace
    log: Log
    arch: dict
    name: str  # "low" or "high", in log lines and checkpoint names
    size: int  # input side in pixels
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class _Schedule:
    """Step counts of one phase."""

    steps_per_epoch: int
    total: int
    warmup: int
    ckpt_every: int

    def checkpoint_due(self, step: int) -> bool:
        return step % self.ckpt_every == 0 or self.epoch_done(step)

    def epoch_done(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or step == self.total


@dataclass
class _Running:
    """Training loss and top-1 since the last checkpoint."""

    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.item() * len(y)
        self.seen += len(y)
        self.correct += (logits.argmax(-1) == y).sum().item()

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.seen)


def _schedule(args: argparse.Namespace, n: int, epochs: float, warmup_epochs: float) -> _Schedule:
    steps_per_epoch = n // args.batch_size
    total = max(1, round(epochs * steps_per_epoch))
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch)) if total > 1 else 0
    # At least four checkpoints per phase, so a short phase still leaves usable progress.
    ckpt_every = max(1, min(steps_per_epoch // args.checkpoints_per_epoch, -(-total // 4)))
    return _Schedule(steps_per_epoch, total, warmup, ckpt_every)


def run_phase(
    args: argparse.Namespace,
    log: Log,
    model: nn.Module,
    arch: dict,
    phase: str,
    size: int,
    epochs: float,
    peak: float,
    warmup_epochs: float,
    data: tuple,
    start_epoch: int,
) -> int:
    """Train one phase; returns the epoch counter after it."""
    train_x, train_y, test_x, test_y = data
    ph = _Phase(args, log, arch, phase, size, test_x, test_y)
    plan = _schedule(args, len(train_x), epochs, warmup_epochs)
    opt = make_optimizer(model, args.weight_decay)
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    gen = torch.Generator().manual_seed(args.seed * 1000 + (size))
    _log_phase_start(ph, model, plan.total, epochs, peak)
    model.train()
    ema = copy.deepcopy(model).eval() if args.ema > 0 else None
    step, epoch, t_phase = 0, start_epoch, time.time()
    running = _Running()
    while step < plan.total:
        perm = torch.randperm(len(train_x), generator=gen)
        for b in range(plan.steps_per_epoch):
            if step >= plan.total:
                break
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            imgs = augment(train_x[idx].unsqueeze(1), args.shift, not args.no_flip, gen).squeeze(1)
            x, y = to_input(imgs, size).to(args.device), train_y[idx].to(args.device)
            lr = lr_at(step, plan.total, plan.warmup, peak, args.min_lr)
            logits, loss = _train_step(model, opt, crit, x, y, lr)
            step += 1
            if ema is not None:
                _update_ema(ema, model, args.ema, step)
            running.add(loss, logits, y)
            if step % 50 == 0:
                rate = step / (time.time() - t_phase)
                log(
                    f"{phase} step {step}/{plan.total} lr {lr:.2e} loss {running.loss:.4f} "
                    f"train-acc {100 * running.correct / running.seen:.2f} ({rate:.2f} steps/s, "
                    f"{(plan.total - step) / rate / 60:.1f} min left in phase)"
                )
            if plan.checkpoint_due(step):
                epoch_done = plan.epoch_done(step)
                epoch = _checkpoint(ph, model, ema, step, running, epoch, epoch_done)
                running = _Running()
                model.train()
    if ema is not None:  # the phase's result is the averaged model
        model.load_state_dict(ema.state_dict())
    return epoch


def _log_phase_start(ph: _Phase, model: nn.Module, total: int, epochs: float, peak: float) -> None:
    tokens = (ph.size // ph.arch["patch_size"]) ** 2
    drop = float(getattr(model.patch_drop, "prob", 0.0))
    ph.log(
        f"phase {ph.name}: {ph.size}x{ph.size} input, {tokens} patch tokens "
        f"({int(tokens * (1 - drop))} kept per image while training) + class token, {total} "
        f"steps ({epochs} epochs), peak lr {peak}"
    )


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    crit: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step at learning rate ``lr``; returns (logits, loss) of the batch."""
    for g in opt.param_groups:
        g["lr"] = lr
    logits = model(x)
    loss = crit(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return logits, loss


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, max_decay: float, step: int) -> None:
    # Short warm-up so early averages are not dominated by the init.
    decay = min(max_decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)


def _checkpoint(
    ph: _Phase,
    model: nn.Module,
    ema: nn.Module | None,
    step: int,
    running: _Running,
    epoch: int,
    epoch_done: bool,
) -> int:
    """Evaluate, log and save ``last.safetensors`` (and an epoch file when ``epoch_done``);
    the EMA weights are the ones scored and saved when kept. Returns the epoch counter."""
    args, tag = ph.args, f"{ph.name}-step{step:05d}"
    acc = evaluate(model, ph.test_x, ph.test_y, ph.size, args.device)
    note = ""
    if ema is not None:
        raw, acc = acc, evaluate(ema, ph.test_x, ph.test_y, ph.size, args.device)
        note = f", raw weights {raw:.2f}%"
    ph.log(
        f"checkpoint {tag}: test top-1 on {len(ph.test_x)} images {acc:.2f}%{note} "
        f"(train loss {running.loss:.4f})"
    )
    keep = model if ema is None else ema
    arch_now = {**ph.arch, "img_size": ph.size}
    info = {"phase": ph.name, "step": step, "eval_acc": acc, "eval_images": len(ph.test_x)}
    fmnist_vit.save(keep, args.out / "last.safetensors", arch_now, info)
    if epoch_done:
        epoch += 1
        fmnist_vit.save(keep, args.out / f"epoch-{epoch:02d}-{tag}.safetensors", arch_now, info)
    return epoch


def time_steps(
    args: argparse.Namespace, arch: dict, train_x: torch.Tensor, train_y: torch.Tensor
) -> None:
    """Measure the seconds per training step at both input sizes and project the run time."""
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    steps_per_epoch = len(train_x) // args.batch_size
    total_s = 0.0
    phases = ((args.low_size, args.low_epochs, args.patch_drop), (56, args.high_epochs, 0.0))
    for size, epochs, drop in phases:
        model = fmnist_vit.build(arch, img_size=size, patch_drop_rate=drop).to(args.device).train()
        opt = make_optimizer(model, args.weight_decay)
        times = []
        for i in range(args.time_steps + 1):
            idx = torch.arange(i * args.batch_size, (i + 1) * args.batch_size)
            x, y = to_input(train_x[idx], size).to(args.device), train_y[idx].to(args.device)
            t = time.perf_counter()
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        med = sorted(times[1:])[len(times[1:]) // 2]
        total_s += med * steps_per_epoch * epochs
        print(
            f"{size}x{size}, patch drop {drop}: {med:.3f} s/step (batch {args.batch_size}), "
            f"{med * steps_per_epoch / 60:.1f} min/epoch, {epochs} epochs"
        )
    print(f"projected training time: {total_s / 60:.1f} min (evaluation not included)")


def evaluate_checkpoint(file: Path, data: str | None, bs: int = 500) -> dict:
    """Top-1 of a checkpoint on the whole test set, loaded and preprocessed the way users do
    it (``fmnist_vit.load`` + ``tokenreduce.data.preprocess``); also per class."""
    from .data.fashion_mnist import LABELS, preprocess

    model = fmnist_vit.load(file)
    images, labels = fashion_mnist("test", data)
    preds = []
    t = time.time()
    with torch.no_grad():
        for i in range(0, len(images), bs):
            preds.append(model(preprocess(images[i : i + bs], model)).argmax(-1))
    pred = torch.cat(preds)
    per_class = {
        LABELS[c]: round(100.0 * (pred[labels == c] == c).float().mean().item(), 2)
        for c in range(len(LABELS))
    }
    return {
        "checkpoint": str(file),
        "test_images": len(labels),
        "top1": round(100.0 * (pred == labels).float().mean().item(), 2),
        "per_class_top1": per_class,
        "seconds": round(time.time() - t, 1),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate is not None:
        print(json.dumps(evaluate_checkpoint(args.evaluate, args.data), indent=2))
        return
    torch.manual_seed(args.seed)
    arch, init = _architecture_and_init(args)
    train_x, train_y = fashion_mnist("train", args.data)
    test_x, test_y = fashion_mnist("test", args.data)
    if args.limit:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
    if args.time_steps:
        time_steps(args, arch, train_x, train_y)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "train.log")
    log(f"args: {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    data = (train_x, train_y, test_x[: args.eval_limit], test_y[: args.eval_limit])
    t0 = time.time()
    model = _train(args, log, arch, init, data)
    _save_final(args, log, model, arch, test_x, test_y, time.time() - t0)


def _architecture_and_init(args: argparse.Namespace) -> tuple[dict, nn.Module | None]:
    """The architecture to train and the model to start from: ``--init``'s weights and
    metadata (with a zero-initialised conv branch added when ``--conv-stem`` asks for one),
    else the command-line architecture and no model."""
    arch = {
        **fmnist_vit.DEFAULT_ARCH,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.heads,
        "mlp_ratio": args.mlp_ratio,
    }
    if args.conv_stem:
        arch["conv_stem"] = list(args.conv_stem)
    init = None
    if args.init is not None:
        init = fmnist_vit.load(args.init).train()
        arch = {**fmnist_vit.read_metadata(args.init)["arch"], "img_size": 56}
        if args.conv_stem and not arch.get("conv_stem"):  # add a branch that starts at zero
            arch["conv_stem"] = list(args.conv_stem)
            init = grow(init, arch, 56).train()
    return arch, init


def _train(
    args: argparse.Namespace, log: Log, arch: dict, init: nn.Module | None, data: tuple
) -> nn.Module:
    """Run the low phase (when it has epochs), then the 56x56 phase; returns the model."""
    epoch = 0
    if args.low_epochs > 0:
        drop = {"patch_drop_rate": args.patch_drop}
        if init is None:
            model = fmnist_vit.build(arch, img_size=args.low_size, **drop)
        else:
            model = grow(init, arch, args.low_size, **drop)
        log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {arch}")
        low = (args.low_size, args.low_epochs, args.lr, args.warmup)
        epoch = run_phase(args, log, model.to(args.device), arch, "low", *low, data, epoch)
        # A fresh model without patch dropout, at 56x56 (position embedding resampled if needed).
        model = grow(model.cpu(), arch, 56).to(args.device)
        peak, warm = args.high_lr, args.high_warmup
    elif init is not None:  # continue training with all tokens
        model = init.to(args.device)
        peak, warm = args.high_lr, args.high_warmup
    else:
        model = fmnist_vit.build(arch, img_size=56).to(args.device)
        peak, warm = args.lr, args.warmup
    if args.high_epochs > 0:
        run_phase(args, log, model, arch, "high", 56, args.high_epochs, peak, warm, data, epoch)
    return model


def _save_final(
    args: argparse.Namespace,
    log: Log,
    model: nn.Module,
    arch: dict,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    train_s: float,
) -> None:
    """Score ``model`` on the whole test set; write ``final.safetensors`` and
    ``summary.json``."""
    acc = evaluate(model, test_x, test_y, 56, args.device)
    final = args.out / "final.safetensors"
    summary = {"test_top1": acc, "test_images": len(test_x), "train_seconds": round(train_s, 1)}
    fmnist_vit.save(model.cpu(), final, {**arch, "img_size": 56}, summary)
    log(
        f"done: test top-1 {acc:.2f}% on {len(test_x)} images, training {train_s / 60:.1f} min -> {final}"
    )
    (args.out / "summary.json").write_text(
        json.dumps({**summary, "arch": {**arch, "img_size": 56}}, indent=2)
    )


if __name__ == "__main__":
    main()
