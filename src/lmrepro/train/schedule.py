"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state.

``schedule.formula`` says how a step maps onto the warmup and the decay, so that a preset's learning rate
equals its seed's at every step (s is lmrepro's 1-based optimizer step, S the run's steps, w the warmup;
the decay's progress p runs over the S - w steps after warmup):

- ``lmrepro``: warmup peak·s/w for s ≤ w; p = (s - w)/(S - w), so the decay ends exactly at the last step.
- ``torchtitan``: torchtitan's LambdaLR (every eminorhan fork), which is evaluated at the 0-based step
  x = s - 1: warmup peak·(x + 1)/(w + 1) for x < w; p = (x - w)/(S - w) (one step behind: the last step
  is at 1/(S - w) of the way from the floor, never at it).
- ``nanogpt``: build-nanogpt's ``get_lr(it)`` (training-custom-llama), x = s - 1: warmup peak·(x + 1)/w
  for x < w; p = (x - w)/(S - w).
- ``neox``: GPT-NeoX's AnnealingLR (Llemma; ``decay_lr_to`` is ``min_lr_ratio``), and equally Hugging
  Face's ``get_*_schedule_with_warmup`` (llm-pytorch), x = s - 1: warmup peak·x/w for x ≤ w (the first
  step trains at lr 0); p = (x - w)/(S - w).

The decay shape (``schedule.decay``) then maps p to the learning rate the same way for every formula.
"""

from __future__ import annotations

import math

from lmrepro.config import ScheduleConfig

FORMULAS = ("lmrepro", "torchtitan", "nanogpt", "neox")


def warmup_and_progress(step: int, total_steps: int, warmup: int, formula: str) -> tuple[float | None, float]:
    """(the warmup factor, or None once warmup is over; the decay's progress p) of 1-based ``step``."""
    if formula == "lmrepro":
        if step <= warmup:
            return step / warmup, 0.0
        return None, (step - warmup) / max(total_steps - warmup, 1)
    x = step - 1  # the 0-based step the seeds' schedulers are evaluated at
    if formula == "torchtitan" and x < warmup:
        return (x + 1) / (warmup + 1), 0.0
    if formula == "nanogpt" and x < warmup:
        return (x + 1) / warmup, 0.0
    if formula == "neox" and warmup > 0 and x <= warmup:
        return x / warmup, 0.0
    if formula not in FORMULAS:
        raise ValueError(f"schedule.formula = {formula!r}; valid: {', '.join(FORMULAS)}")
    return None, (x - warmup) / max(total_steps - warmup, 1)


def lr_at(step: int, peak_lr: float, total_steps: int, schedule: ScheduleConfig) -> float:
    """Learning rate of optimizer step `step` (1-based) of a `total_steps` run.

    Linear warmup to peak over warmup_steps, then `schedule.decay` towards min_lr_ratio × peak
    (wsd: constant, then linear over the last decay_fraction), both as `schedule.formula` places them.
    """
    if not 1 <= step <= total_steps:
        raise ValueError(f"step {step} outside the run's steps [1, {total_steps}]")
    warmup_factor, progress = warmup_and_progress(step, total_steps, schedule.warmup_steps, schedule.formula)
    if warmup_factor is not None:
        return peak_lr * warmup_factor
    min_lr = peak_lr * schedule.min_lr_ratio
    if schedule.decay == "constant":
        return peak_lr
    if schedule.decay == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.decay == "linear":
        return peak_lr - (peak_lr - min_lr) * progress
    if schedule.decay == "wsd":
        stable_until = 1.0 - schedule.decay_fraction
        if progress <= stable_until:
            return peak_lr
        return peak_lr - (peak_lr - min_lr) * (progress - stable_until) / schedule.decay_fraction
    raise ValueError(f"schedule.decay = {schedule.decay!r}; valid: cosine, linear, constant, wsd")
