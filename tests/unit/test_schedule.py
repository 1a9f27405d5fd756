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


# ---------------------------------------------------------------- the seeds' formulas, step for step


def scheduler_lrs(make_scheduler, total: int, peak: float) -> list[float]:
    """The lr each optimizer step of a torch LambdaLR-style scheduler trains with (read before step())."""
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = make_scheduler(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("decay", "hf_name"), [("linear", "linear"), ("cosine", "cosine")])
def test_neox_formula_equals_hugging_face_schedulers(decay, hf_name):
    """llm-pytorch trains with transformers' get_scheduler(linear|cosine, warmup, total): equal every step."""
    from transformers import get_scheduler

    total, warmup, peak = 50, 7, 5e-5

    def make(opt):
        return get_scheduler(hf_name, opt, num_warmup_steps=warmup, num_training_steps=total)

    expected = scheduler_lrs(make, total, peak)
    schedule = ScheduleConfig(warmup_steps=warmup, decay=decay, min_lr_ratio=0.0, formula="neox")
    assert lrs(schedule, total, peak) == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert lrs(schedule, total, peak)[0] == 0.0  # the first step trains at lr 0, as the seed's


def test_torchtitan_formula_equals_its_lambdalr():
    """The eminorhan forks' linear_warmup_linear_decay under LambdaLR, written from its definition:
    warmup (x + 1)/(w + 1) for x < w, then 1 - (x - w)/(S - w) at the 0-based step x."""
    import torch

    total, warmup, peak = 30, 4, 3e-4

    def factor(x: int) -> float:
        if x < warmup:
            return (x + 1) / (warmup + 1)
        return 1 - (x - warmup) / (total - warmup)

    expected = scheduler_lrs(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor), total, peak)
    schedule = ScheduleConfig(warmup_steps=warmup, decay="linear", min_lr_ratio=0.0, formula="torchtitan")
    got = lrs(schedule, total, peak)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == pytest.approx(peak / 5) and got[3] == pytest.approx(peak * 4 / 5)  # s = 1, s = w
    assert got[4] == pytest.approx(peak)  # s = w + 1: the peak, one step later than lmrepro's
    assert got[-1] == pytest.approx(peak / (total - warmup))  # never reaches 0


def test_nanogpt_formula_is_build_nanogpt_get_lr():
    """training-custom-llama: max 1.8e-3, min 0.1 x max, warmup 715, 19,073 steps (get_lr(it), it 0-based)."""
    peak, warmup, total = 1.8e-3, 715, 19073
    schedule = ScheduleConfig(warmup_steps=warmup, decay="cosine", min_lr_ratio=0.1, formula="nanogpt")

    def get_lr(it: int) -> float:
        if it < warmup:
            return peak * (it + 1) / warmup
        ratio = (it - warmup) / (total - warmup)
        return 0.1 * peak + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - 0.1 * peak)

    for step in (1, 2, 715, 716, 717, 10000, 19072, 19073):
        assert lr_at(step, peak, total, schedule) == pytest.approx(get_lr(step - 1), rel=1e-12), step
    assert lr_at(716, peak, total, schedule) == pytest.approx(peak)


def test_lmrepro_formula_unchanged_and_unknown_formula_named():
    schedule = sched("linear")
    assert schedule.formula == "lmrepro"
    assert lr_at(WARMUP, PEAK, TOTAL, schedule) == PEAK
    assert lr_at(TOTAL, PEAK, TOTAL, schedule) == pytest.approx(0.1 * PEAK, rel=1e-12)
    with pytest.raises(ValueError, match=r"^schedule\.formula = 'titan'; valid: lmrepro, torchtitan"):
        lr_at(20, PEAK, TOTAL, sched("linear", formula="titan"))
