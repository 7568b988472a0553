"""The step loop every trainable asset shares: time each step, log the mean loss every few
steps and save a resumable checkpoint every few steps and at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def run_steps(
    step: int,
    steps: int,
    seconds: float,
    train_step: Callable[[int], float],
    save: Callable[[int, float], None],
    *,
    log_every: int,
    save_every: int,
    log: Callable[[str], Any],
    note: Callable[[int], str] = lambda step: "",
) -> dict[str, Any]:
    """Train from ``step`` to ``steps``: ``train_step(step)`` returns the step's loss,
    ``save(step, seconds)`` writes a checkpoint with the training seconds so far (``seconds``
    from earlier sessions included); ``note(step)`` adds words to a log line (a learning
    rate). Returns the step reached, the training seconds and this session's seconds per
    step (None when no step ran)."""
    start_step, losses, session = step, [], 0.0
    while step < steps:
        began = time.perf_counter()
        losses.append(train_step(step))
        session += time.perf_counter() - began
        step += 1
        if step % log_every == 0 or step == steps:
            log(
                f"step {step}/{steps}  loss {sum(losses) / len(losses):.4f}  {note(step)}"
                f"{session / (step - start_step):.2f} s/step"
            )
            losses.clear()
        if step % save_every == 0 or step == steps:
            save(step, seconds + session)
    per_step = session / (step - start_step) if step > start_step else None
    return {"step": step, "train_seconds": seconds + session, "seconds_per_step": per_step}
