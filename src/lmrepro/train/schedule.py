"""Learning-rate schedules as pure functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from lmrepro.config import ScheduleConfig


def lr_at(step: int, peak_lr: float, total_steps: int, schedule: ScheduleConfig) -> float:
    """Learning rate of optimizer step `step` (1-based) of a `total_steps` run.

    Linear warmup from peak/warmup to peak over warmup_steps, then `schedule.decay` down to
    min_lr_ratio × peak at the last step (wsd: constant, then linear over the last decay_fraction).
    """
    if not 1 <= step <= total_steps:
        raise ValueError(f"step {step} outside the run's steps [1, {total_steps}]")
    warmup = schedule.warmup_steps
    if step <= warmup:
        return peak_lr * step / warmup
    min_lr = peak_lr * schedule.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    progress = (step - warmup) / decay_steps  # in (0, 1]
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
