"""Selective language modelling (Rho-1) for Hugging Face causal language models.

Lin et al., *Rho-1: Not All Tokens Are What You Need*, NeurIPS 2024. Each token's *excess loss*
is its loss under the model being trained minus its loss under a frozen reference model
(trained on clean, high-quality text); the model is trained only on the ``keep_ratio``
fraction of the batch's tokens with the highest excess loss. Tokens both models find hard
(noise) and tokens both find easy (already learnt) drop out of the loss; tokens the reference
knows and the model does not yet stay in.

* :func:`token_losses` and :func:`selective_lm_loss`: the loss, for logits and labels in the
  Hugging Face convention (``labels`` aligned with ``input_ids``; the shift happens here).
* :func:`train_lm`: a short, seeded, resumable training recipe (AdamW, warm-up then cosine
  decay, clipping at norm 1) logging the training loss, the objective and the gradient norm
  per step and the held-out perplexity at checkpoints.
* ``python -m tokenreduce.train.rho1 experiment``: full loss against selective loss at equal
  tokens seen, on a small byte-level Llama trained from scratch on the Jargon File with
  injected noise; writes ``curves.csv``, ``summary.json`` and ``curves.png``.

The experiment's reference is the same small architecture trained briefly on a clean split
of the prose (the paper's reference is trained on high-quality data), and the compared runs
train on the rest with a fraction of sentences replaced by random characters: the setting
where selection should help. A byte-level model from scratch rather than SmolLM2-135M because
a 49k-token softmax over 135M parameters takes seconds per step on a CPU; ``train_lm`` and
``selective_lm_loss`` take SmolLM2 (``tokenreduce.assets.load("smollm2")``) unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # the label Hugging Face models and F.cross_entropy leave out
WEIGHTS, STATE = "last.safetensors", "state.pt"


class Rho1Error(ValueError):
    """An argument of the selective loss or its recipe is outside what they accept."""


def token_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy of a causal LM.

    Args:
        logits: (B, T, V), the model's output for ``input_ids`` of shape (B, T).
        labels: (B, T) token ids aligned with ``input_ids`` (position t + 1 is predicted from
            position t, the shift is done here); ``ignore_index`` marks tokens without a loss.
        attention_mask: optional (B, T), 0 at padding: padded targets carry no loss.
        ignore_index: the label value left out.

    Returns:
        ``(losses, valid)``: losses (B, T - 1) in nats, 0 where not valid, and the bool mask
        (B, T - 1) of targets that count.

    Raises:
        Rho1Error: shapes that do not match (the message names them).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise Rho1Error(f"logits must be (B, T, V) and labels (B, T); got logits "
                        f"{tuple(logits.shape)}, labels {tuple(labels.shape)}")  # fmt: skip
    if attention_mask is not None and attention_mask.shape != labels.shape:
        raise Rho1Error(f"attention_mask must be (B, T) like labels {tuple(labels.shape)}, "
                        f"got {tuple(attention_mask.shape)}")  # fmt: skip
    targets = labels[:, 1:]
    valid = targets != ignore_index
    if attention_mask is not None:
        valid = valid & attention_mask[:, 1:].bool()
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    losses = F.cross_entropy(flat, targets.masked_fill(~valid, 0).reshape(-1), reduction="none")
    return losses.view_as(targets) * valid, valid


def select_tokens(excess: torch.Tensor, valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The bool mask of the ``ceil(keep_ratio * valid.sum())`` valid tokens with the highest
    ``excess`` loss, chosen over the whole batch (as in the paper), never fewer than one.
    ``excess`` and ``valid`` are (B, T - 1); the choice carries no gradient."""
    check_keep_ratio(keep_ratio)
    n_valid = int(valid.sum())
    k = min(n_valid, max(1, math.ceil(keep_ratio * n_valid)))
    scores = excess.detach().float().masked_fill(~valid, -math.inf).flatten()
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if n_valid:
        chosen[scores.topk(k).indices] = True
    return chosen.view_as(valid)


def check_keep_ratio(keep_ratio: float) -> None:
    if not (isinstance(keep_ratio, (int, float)) and 0 < keep_ratio <= 1):
        raise Rho1Error(f"keep_ratio must be a fraction in (0, 1], got {keep_ratio!r}")


def selective_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor | None,
    keep_ratio: float,
    attention_mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Rho-1's selective language-modelling loss: the mean cross-entropy over the top
    ``keep_ratio`` of valid tokens by excess loss (model loss minus reference loss).

    Args:
        logits: (B, T, V) of the model being trained; labels (B, T) and ``attention_mask``
            as in :func:`token_losses`.
        reference: the frozen reference model's logits (B, T, V) for the same inputs, or its
            per-token losses (B, T - 1) from :func:`token_losses`; ``None`` only with
            ``keep_ratio`` 1 (every valid token, plain cross-entropy).
        keep_ratio: fraction of valid tokens trained on, in (0, 1].

    Returns:
        The scalar loss; gradients reach only the selected tokens' logits. 0 (with a
        gradient) when no target is valid.

    Raises:
        Rho1Error: ``keep_ratio`` outside (0, 1], a missing reference, or shapes that do not
            match.
    """
    return _objective(logits, labels, reference, keep_ratio, attention_mask, ignore_index)[0]


def _objective(logits, labels, reference, keep_ratio, attention_mask=None,
               ignore_index=IGNORE_INDEX):  # fmt: skip
    """``(selective loss, mean loss over every valid token)``: the second is the plain
    training loss the recipe logs next to the objective."""
    check_keep_ratio(keep_ratio)
    losses, valid = token_losses(logits, labels, attention_mask, ignore_index)
    n = valid.sum().clamp(min=1)
    full = losses.sum() / n
    if keep_ratio == 1:
        return full, full.detach()
    ref_losses = _reference_losses(reference, labels, attention_mask, ignore_index)
    chosen = select_tokens(losses.detach() - ref_losses, valid, keep_ratio)
    return (losses * chosen).sum() / chosen.sum().clamp(min=1), full.detach()


def _reference_losses(reference, labels, attention_mask, ignore_index) -> torch.Tensor:
    want = (labels.shape[0], labels.shape[1] - 1)
    if reference is None:
        raise Rho1Error("keep_ratio < 1 needs the reference model's logits (B, T, V) or "
                        "per-token losses (B, T - 1); got None")  # fmt: skip
    if reference.dim() == 3:
        return token_losses(reference.detach(), labels, attention_mask, ignore_index)[0]
    if tuple(reference.shape) != want:
        raise Rho1Error(f"reference losses must be (B, T - 1) = {want}, got "
                        f"{tuple(reference.shape)}")  # fmt: skip
    return reference.detach().float()


# ---------------------------------------------------------------------------------------
# The recipe


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The rows of step ``step``: consecutive slices of a permutation of ``range(n)`` drawn
    per epoch from ``seed``, so any step's batch is known without replaying the run (which
    makes a resumed run identical to an uninterrupted one)."""
    per_epoch = n // batch_size
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[slot * batch_size : (slot + 1) * batch_size]


def lr_at(step: int, steps: int, lr: float, warmup: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` fraction of ``steps``, then cosine to 0."""
    w = max(1, round(warmup * steps))
    if step < w:
        return lr * (step + 1) / w
    return lr * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, batch_size: int = 16) -> float:
    """exp of the mean next-token loss of ``model`` over the (N, T) token ids ``data``."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for rows in data.split(batch_size):
        losses, valid = token_losses(model(input_ids=rows).logits, rows)
        total, count = total + float(losses.sum()), count + int(valid.sum())
    model.train(was_training)
    return math.exp(total / max(1, count))


def _check_recipe(data, ref_model, steps, batch_size, keep_ratio) -> None:
    check_keep_ratio(keep_ratio)
    if not (torch.is_tensor(data) and data.dim() == 2 and not data.is_floating_point()):
        raise Rho1Error(f"data must be integer token ids (N, T), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} "
                        f"{tuple(getattr(data, 'shape', ()))}")  # fmt: skip
    if not (isinstance(steps, int) and steps >= 1):
        raise Rho1Error(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(batch_size, int) and 1 <= batch_size <= len(data)):
        raise Rho1Error(f"batch_size must be an integer in [1, {len(data)}] (the rows of "
                        f"data), got {batch_size!r}")  # fmt: skip
    if keep_ratio < 1 and ref_model is None:
        raise Rho1Error(f"keep_ratio {keep_ratio} < 1 needs a reference model (ref_model)")


def _train_step(model, ref_model, optimizer, rows, keep_ratio) -> dict:
    ref_losses = None
    if keep_ratio < 1:  # the reference's losses once per batch, without a graph
        with torch.no_grad():
            ref_losses = token_losses(ref_model(input_ids=rows).logits, rows)[0]
    objective, full = _objective(model(input_ids=rows).logits, rows, ref_losses, keep_ratio)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm before clipping
    optimizer.step()
    return {"train_loss": float(full), "objective": float(objective.detach()),
            "grad_norm": float(grad_norm)}  # fmt: skip


def _resume(out: Path | None, model, optimizer, config: dict) -> tuple[int, dict]:
    """The step to continue from and the history so far (0 and an empty history when
    ``out`` holds no run). A run with other settings is refused, naming them."""
    history = {"steps": [], "evals": []}
    if out is None or not (out / STATE).is_file():
        return 0, history
    state = torch.load(out / STATE, weights_only=True)
    differ = {k: (state["config"].get(k), v) for k, v in config.items()
              if state["config"].get(k) != v}  # fmt: skip
    if differ:
        words = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise Rho1Error(f"{out} holds a run with other settings ({words}); use a new out")
    from safetensors.torch import load_model

    load_model(model, str(out / WEIGHTS), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), state["history"]


def _save(out: Path, step: int, model, optimizer, config: dict, history: dict) -> None:
    from safetensors.torch import save_model

    # save_model, not save_file: it stores tied weights (embeddings shared with the LM head,
    # as in SmolLM2) once and restores the tie on load
    meta = {"step": str(step), "keep_ratio": str(config["keep_ratio"])}
    save_model(model, str(out / ".weights.tmp"), metadata=meta)
    (out / ".weights.tmp").replace(out / WEIGHTS)
    state = {"step": step, "optimizer": optimizer.state_dict(), "config": config,
             "history": history}  # fmt: skip
    torch.save(state, out / ".state.tmp")
    (out / ".state.tmp").replace(out / STATE)  # weights first: the state never runs ahead


def train_lm(
    model: nn.Module,
    ref_model: nn.Module | None,
    data: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    keep_ratio: float = 1.0,
    seed: int = 0,
    out: str | Path | None = None,
    batch_size: int = 16,
    eval_data: torch.Tensor | None = None,
    eval_every: int = 50,
    stop_at: int | None = None,
) -> dict:
    """Train a causal LM on ``data`` with Rho-1's selective loss (plain cross-entropy at
    ``keep_ratio`` 1), in place.

    Args:
        model: a Hugging Face causal LM (``model(input_ids=...).logits``), trained in place.
        ref_model: the frozen reference model (same tokenizer); needed when ``keep_ratio`` < 1.
        data: (N, T) int64 token ids, every position a target (fixed-length chunks).
        steps: optimiser steps; every step sees ``batch_size * (T - 1)`` targets whatever
            ``keep_ratio`` is, so runs of equal ``steps`` have seen equal tokens.
        lr: peak AdamW learning rate (warm-up over 10% of steps, cosine decay, clip at 1).
        keep_ratio: fraction of each batch's valid tokens trained on, in (0, 1].
        seed: the batch order (the model's initialisation is the caller's).
        out: a folder for ``last.safetensors`` and ``state.pt``, written at every evaluation
            and at the end; a run found there is resumed.
        eval_data: (M, T) held-out token ids, perplexity measured every ``eval_every`` steps
            and at the end.
        stop_at: stop (checkpointed) after this step, as if interrupted; for resumption.

    Returns:
        ``{"steps": [{"step", "tokens_seen", "train_loss", "objective", "grad_norm"}],
        "evals": [{"step", "tokens_seen", "ppl"}]}``; losses in nats per token.

    Raises:
        Rho1Error: arguments outside their ranges, or ``out`` holding a different run.
    """
    _check_recipe(data, ref_model, steps, batch_size, keep_ratio)
    config = {"steps": steps, "lr": lr, "keep_ratio": keep_ratio, "seed": seed,
              "batch_size": batch_size, "shape": list(data.shape)}  # fmt: skip
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start, history = _resume(out, model, optimizer, config)
    model.train()
    per_step = batch_size * (data.shape[1] - 1)
    for step in range(start, min(steps, stop_at or steps)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        rows = data[batch_indices(len(data), batch_size, step, seed)]
        log = _train_step(model, ref_model, optimizer, rows, keep_ratio)
        history["steps"].append({"step": step + 1, "tokens_seen": (step + 1) * per_step, **log})
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            if eval_data is not None:
                ppl = perplexity(model, eval_data)
                history["evals"].append({"step": step + 1, "tokens_seen": (step + 1) * per_step,
                                         "ppl": ppl})  # fmt: skip
            if out is not None:
                _save(out, step + 1, model, optimizer, config, history)
    if out is not None and stop_at is not None:
        _save(out, min(steps, stop_at), model, optimizer, config, history)
    return history


# ---------------------------------------------------------------------------------------
# Stability measures


def spike_count(losses: list[float], factor: float = 1.2, window: int = 20) -> int:
    """Loss spikes: steps whose loss exceeds ``factor`` times the median of the ``window``
    steps before it (steps before the first full window are not judged)."""
    return sum(
        losses[i] > factor * statistics.median(losses[i - window : i])
        for i in range(window, len(losses))
    )


def grad_norm_variance(norms: list[float], skip: float = 0.1) -> float:
    """Variance of the pre-clipping gradient norms after the first ``skip`` fraction of
    steps (the warm-up, whose large early norms say nothing about stability)."""
    rest = norms[int(skip * len(norms)) :]
    return statistics.pvariance(rest) if len(rest) > 1 else 0.0


# ---------------------------------------------------------------------------------------
# The experiment: full against selective loss at equal tokens seen

NOISE_ALPHABET = [chr(c) for c in range(32, 127)]


def byte_chunks(sentences: list[str], seq_len: int) -> torch.Tensor:
    """The UTF-8 bytes of ``sentences`` joined by newlines, cut into (N, seq_len) int64 rows
    (the byte-level vocabulary has 256 tokens; the last partial row is dropped)."""
    ids = torch.tensor(list("\n".join(sentences).encode("utf-8")), dtype=torch.long)
    n = len(ids) // seq_len
    if n == 0:
        raise Rho1Error(f"{len(ids)} bytes of text make no row of seq_len {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def jargon_splits(seed: int, noise: float, seq_len: int) -> dict[str, torch.Tensor]:
    """The Jargon File's prose sentences shuffled by ``seed`` and split 70/20/10 into
    ``train`` (a ``noise`` fraction of its sentences replaced by random printable characters
    of the same length: tokens no model can learn, as in noisy web text), ``clean`` (the
    reference model's high-quality set) and ``heldout`` (clean prose for perplexity)."""
    from ..lmtasks import jargon_sentences

    if not 0 <= noise < 1:
        raise Rho1Error(f"noise must be a fraction in [0, 1), got {noise!r}")
    rng = random.Random(seed)
    sentences = jargon_sentences()
    rng.shuffle(sentences)
    a, b = int(0.7 * len(sentences)), int(0.9 * len(sentences))
    train = [
        "".join(rng.choices(NOISE_ALPHABET, k=len(s))) if rng.random() < noise else s
        for s in sentences[:a]
    ]
    parts = {"train": train, "clean": sentences[a:b], "heldout": sentences[b:]}
    return {name: byte_chunks(text, seq_len) for name, text in parts.items()}


def byte_llama(seed: int, seq_len: int, layers: int = 4, width: int = 128) -> nn.Module:
    """A small Llama over bytes (vocabulary 256), randomly initialised from ``seed``:
    ``layers`` layers of width ``width``, 4 heads, MLP 3x wide, tied embeddings."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=width, intermediate_size=3 * width,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=seq_len, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def summarise(history: dict, spike_factor: float, window: int) -> dict:
    """The stability and quality figures of one run's history."""
    train = [s["train_loss"] for s in history["steps"]]
    objective = [s["objective"] for s in history["steps"]]
    norms = [s["grad_norm"] for s in history["steps"]]
    return {
        "final_heldout_ppl": history["evals"][-1]["ppl"],
        "best_heldout_ppl": min(e["ppl"] for e in history["evals"]),
        "tokens_seen": history["steps"][-1]["tokens_seen"],
        "train_loss_spikes": spike_count(train, spike_factor, window),
        "objective_spikes": spike_count(objective, spike_factor, window),
        "grad_norm_variance": grad_norm_variance(norms),
        "grad_norm_mean": statistics.fmean(norms[int(0.1 * len(norms)) :]),
    }


def experiment(args: argparse.Namespace) -> dict:
    """Train the reference on ``clean``, then the same initial model twice on ``train``
    (full loss; selective loss at ``keep_ratio``) on the same batches; write the curves."""
    torch.set_num_threads(args.threads)
    data = jargon_splits(args.seed, args.noise, args.seq_len)
    ckpt = Path(args.checkpoints or args.out / "checkpoints")
    common = dict(lr=args.lr, seed=args.seed, batch_size=args.batch_size,
                  eval_data=data["heldout"][: args.eval_rows], eval_every=args.eval_every)  # fmt: skip
    ref = byte_llama(args.seed + 1, args.seq_len, args.layers, args.width)
    ref_history = train_lm(ref, None, data["clean"], args.ref_steps, out=ckpt / "ref", **common)
    histories = {}
    for name, keep in (("full", 1.0), ("selective", args.keep_ratio)):
        model = byte_llama(args.seed, args.seq_len, args.layers, args.width)
        histories[name] = train_lm(model, ref if keep < 1 else None, data["train"], args.steps,
                                   keep_ratio=keep, out=ckpt / name, **common)  # fmt: skip
    summary = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "spike_rule": f"loss > {args.spike_factor} x median of the previous "
        f"{args.spike_window} steps",  # fmt: skip
        "reference_heldout_ppl": ref_history["evals"][-1]["ppl"],
        **{
            name: summarise(h, args.spike_factor, args.spike_window)
            for name, h in histories.items()
        },
    }
    _write(args.out, histories, summary)
    return summary


def _write(out: Path, histories: dict, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "tokens_seen", "train_loss", "objective", "grad_norm",
                    "heldout_ppl"])  # fmt: skip
        for name, h in histories.items():
            ppl = {e["step"]: e["ppl"] for e in h["evals"]}
            for s in h["steps"]:
                w.writerow([name, s["step"], s["tokens_seen"], f"{s['train_loss']:.5f}",
                            f"{s['objective']:.5f}", f"{s['grad_norm']:.5f}",
                            f"{ppl[s['step']]:.4f}" if s["step"] in ppl else ""])  # fmt: skip
    _plot(out / "curves.png", histories, summary)


def _plot(file: Path, histories: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, h in histories.items():
        tokens = [s["tokens_seen"] / 1e6 for s in h["steps"]]
        axes[0].plot([e["tokens_seen"] / 1e6 for e in h["evals"]],
                     [e["ppl"] for e in h["evals"]], marker="o", label=name)  # fmt: skip
        axes[1].plot(tokens, [s["train_loss"] for s in h["steps"]], lw=0.8, label=name)
        axes[2].plot(tokens, [s["grad_norm"] for s in h["steps"]], lw=0.8, label=name)
    axes[0].axhline(summary["reference_heldout_ppl"], ls=":", c="gray", label="reference")
    titles = ("held-out perplexity (clean prose)", "training loss, every token (nats)",
              "gradient norm before clipping")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="tokens seen (millions)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tokenreduce.train.rho1")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("experiment", help="full against selective loss at equal tokens seen")
    e.add_argument("--out", type=Path, default=Path("runs/rho1"))
    e.add_argument("--checkpoints", type=Path, help="run folders (default <out>/checkpoints)")
    e.add_argument("--steps", type=int, default=300, help="steps of each compared run")
    e.add_argument("--ref-steps", type=int, default=300, help="steps of the reference")
    e.add_argument("--keep-ratio", type=float, default=0.6)
    e.add_argument("--noise", type=float, default=0.25, help="fraction of noisy sentences")
    e.add_argument("--lr", type=float, default=2e-3)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--seq-len", type=int, default=128)
    e.add_argument("--layers", type=int, default=4)
    e.add_argument("--width", type=int, default=128)
    e.add_argument("--eval-every", type=int, default=50)
    e.add_argument("--eval-rows", type=int, default=128, help="held-out rows evaluated")
    e.add_argument("--spike-factor", type=float, default=1.2)
    e.add_argument("--spike-window", type=int, default=20)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = experiment(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
