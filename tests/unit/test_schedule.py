"""Unit tests for lmrepro.train.schedule.lr_at (pure function of the step)."""

from __future__ import annotations

import math

import pytest

from lmrepro.config import ScheduleConfig
from lmrepro.train.schedule import lr_at

PEAK = 3e-3
TOTAL = 110
WARMUP = 10


def sched(decay: str, **kw) -> ScheduleConfig:
    args = dict(warmup_steps=WARMUP, decay=decay, min_lr_ratio=0.1, decay_fraction=0.2)
    args.update(kw)
    return ScheduleConfig(**args)


def lrs(schedule: ScheduleConfig, total: int = TOTAL, peak: float = PEAK) -> list[float]:
    return [lr_at(step, peak, total, schedule) for step in range(1, total + 1)]


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant", "wsd"])
def test_linear_warmup_reaches_peak(decay: str) -> None:
    schedule = sched(decay)
    for step in range(1, WARMUP + 1):
        assert lr_at(step, PEAK, TOTAL, schedule) == pytest.approx(PEAK * step / WARMUP)
    assert lr_at(WARMUP, PEAK, TOTAL, schedule) == pytest.approx(PEAK)
    assert lr_at(1, PEAK, TOTAL, schedule) == pytest.approx(PEAK / WARMUP)
    warm = lrs(schedule)[:WARMUP]
    diffs = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(d == pytest.approx(PEAK / WARMUP) for d in diffs)


def test_cosine_ends_at_min_and_is_monotone() -> None:
    values = lrs(sched("cosine", min_lr_ratio=0.1))
    assert values[-1] == pytest.approx(0.1 * PEAK)
    after = values[WARMUP - 1 :]  # from the peak on
    assert after[0] == pytest.approx(PEAK)
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:], strict=False))
    assert min(values[WARMUP:]) >= 0.1 * PEAK - 1e-15
    # Halfway through the decay the cosine is at the midpoint between peak and min.
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_at(mid, PEAK, TOTAL, sched("cosine")) == pytest.approx((PEAK + 0.1 * PEAK) / 2)


def test_cosine_shape_matches_formula() -> None:
    schedule = sched("cosine", min_lr_ratio=0.0)
    for step in (11, 30, 77, 110):
        progress = (step - WARMUP) / (TOTAL - WARMUP)
        assert lr_at(step, PEAK, TOTAL, schedule) == pytest.approx(
            PEAK * 0.5 * (1 + math.cos(math.pi * progress))
        )
    assert lr_at(TOTAL, PEAK, TOTAL, schedule) == pytest.approx(0.0, abs=1e-15)


def test_linear_decay() -> None:
    schedule = sched("linear", min_lr_ratio=0.2)
    values = lrs(schedule)
    assert values[-1] == pytest.approx(0.2 * PEAK)
    after = values[WARMUP:]
    step_size = (PEAK - 0.2 * PEAK) / (TOTAL - WARMUP)
    diffs = [a - b for a, b in zip(after, after[1:], strict=False)]
    assert all(d == pytest.approx(step_size) for d in diffs)
    assert lr_at(60, PEAK, TOTAL, schedule) == pytest.approx(PEAK - (PEAK - 0.2 * PEAK) * 0.5)


def test_constant_after_warmup() -> None:
    values = lrs(sched("constant", min_lr_ratio=0.0))
    assert values[WARMUP - 1 :] == pytest.approx([PEAK] * (TOTAL - WARMUP + 1))


def test_wsd_stable_then_linear_to_min() -> None:
    schedule = sched("wsd", min_lr_ratio=0.1, decay_fraction=0.2)
    # After warmup: 100 decay-phase steps; the last 20 of them decay.
    stable_end = WARMUP + 80
    for step in range(WARMUP, stable_end + 1):
        assert lr_at(step, PEAK, TOTAL, schedule) == pytest.approx(PEAK)
    assert lr_at(stable_end + 1, PEAK, TOTAL, schedule) < PEAK
    assert lr_at(stable_end + 10, PEAK, TOTAL, schedule) == pytest.approx(PEAK - 0.9 * PEAK * 0.5)
    assert lr_at(TOTAL, PEAK, TOTAL, schedule) == pytest.approx(0.1 * PEAK)
    tail = [lr_at(s, PEAK, TOTAL, schedule) for s in range(stable_end, TOTAL + 1)]
    diffs = [a - b for a, b in zip(tail, tail[1:], strict=False)]
    assert all(d == pytest.approx(0.9 * PEAK / 20) for d in diffs)


def test_wsd_full_decay_fraction_equals_linear() -> None:
    wsd = lrs(sched("wsd", decay_fraction=1.0))
    linear = lrs(sched("linear"))
    assert wsd == pytest.approx(linear)


def test_no_warmup_starts_in_decay() -> None:
    schedule = sched("linear", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(1, PEAK, 100, schedule) == pytest.approx(PEAK * 0.99)
    assert lr_at(100, PEAK, 100, schedule) == pytest.approx(0.0, abs=1e-15)


def test_warmup_longer_than_run_never_reaches_decay() -> None:
    schedule = sched("cosine", warmup_steps=50)
    assert lrs(schedule, total=20) == pytest.approx([PEAK * s / 50 for s in range(1, 21)])


def test_single_step_run() -> None:
    assert lr_at(1, PEAK, 1, sched("cosine", warmup_steps=0, min_lr_ratio=0.5)) == pytest.approx(0.5 * PEAK)
    assert lr_at(1, PEAK, 1, sched("cosine", warmup_steps=1)) == pytest.approx(PEAK)


def test_scales_with_peak() -> None:
    schedule = sched("cosine")
    for step in (1, 10, 50, 110):
        assert lr_at(step, 2 * PEAK, TOTAL, schedule) == pytest.approx(2 * lr_at(step, PEAK, TOTAL, schedule))


@pytest.mark.parametrize("step", [0, -1, TOTAL + 1])
def test_step_outside_run_raises(step: int) -> None:
    with pytest.raises(ValueError, match=rf"step {step} outside the run's steps \[1, {TOTAL}\]"):
        lr_at(step, PEAK, TOTAL, sched("cosine"))


def test_unknown_decay_raises() -> None:
    bad = sched("cosine")
    bad.decay = "exp"  # type: ignore[assignment]  # bypasses the strict loader on purpose
    assert lr_at(WARMUP, PEAK, TOTAL, bad) == pytest.approx(PEAK)  # warmup does not look at decay
    with pytest.raises(ValueError, match="schedule.decay = 'exp'"):
        lr_at(WARMUP + 1, PEAK, TOTAL, bad)
