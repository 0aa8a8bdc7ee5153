"""Learning-rate and momentum schedules as pure functions of progress (so a resumed run
continues exactly where it stopped)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, progress: float, base: float, final: float = 0.0,
                  warmup_max: float = 0.1) -> float:
    """Learning rate: a linear warm-up over the first ``warmup_steps`` steps, times a half cosine
    from ``base`` down to ``final`` over ``progress`` in [0, 1].

    Progress is step / total steps, or the elapsed fraction of a wall-clock budget: taking the
    warm-up in steps and the decay in progress lets one formula serve both, with no state.
    The warm-up also ends by ``warmup_max`` of the run at the latest (0 = no cap), whichever kind
    of budget: a warm-up counted in epochs would otherwise outlast a short run, whose learning
    rate then never reaches its peak.
    """
    progress = min(max(progress, 0.0), 1.0)
    ramp = 1.0
    if warmup_steps > 0:
        ramp = min(1.0, (step + 1) / warmup_steps)
        if warmup_max > 0:
            ramp = min(1.0, max(ramp, progress / warmup_max))
    return ramp * (final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def cosine_to_one(progress: float, start: float) -> float:
    """A momentum that rises from ``start`` to 1 on a half cosine (BYOL, DINO, MoCo v3 teachers)."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - start) * 0.5 * (1.0 + math.cos(math.pi * progress))
