"""Warm-start predictors: the next fixed point guessed from the last few of one system.

Why: along an MD trajectory or a relaxation the fixed point z* moves smoothly with the
geometry, so extrapolating the recent fixed points lands closer to the next one than copying
the latest (plain reuse), and the solver needs fewer iterations to reach its tolerance.

Every predictor is a fixed linear combination of the newest fixed points,
z_pred = sum_j c_j z_{n-j} (j = 1 newest), with sum_j c_j = 1 so that a constant sequence
is reproduced. Coefficients, newest first:

    last       [1]              plain reuse
    linear     [2, -1]          exact when z* moves linearly from frame to frame
    quadratic  [3, -3, 1]       exact for a quadratic
    aspc       Kolafa's always-stable predictor-corrector (J. Comput. Chem. 25, 335 (2004)),
               k = 2: B_j = (-1)^(j+1) j C(2k+4, k+2-j) / C(2k+2, k+1), j = 1..k+2
               = [2.8, -2.8, 1.2, -0.2]; exact for linear motion only

ASPC was designed for Born-Oppenheimer MD with ONE corrector step per MD step (a damped SCF
iteration), where its coefficients keep the not-quite-converged errors from building up.
Here the corrector is the DEQ solve itself, run to the solver's tolerance from the
prediction: every fixed point is converged on its own, so no predictor can make errors
accumulate, and the prediction only changes how many iterations the solve needs (and, within
the tolerance, which approximate fixed point it stops at).

The predictors assume equally spaced frames (a fixed MD timestep, consecutive optimiser
steps). When frame ids are known, the history restarts where the spacing changes or the ids
go backwards, and a frame that does not follow at the history's spacing gets plain reuse.
While the history is shorter than a predictor needs, it falls back to the same family at the
order the history supports (1 point: plain reuse).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from math import comb


def _polynomial(n: int) -> list[float]:
    """Degree n-1 extrapolation from n equally spaced points: c_j = (-1)^(j+1) C(n, j)."""
    return [float((-1) ** (j + 1) * comb(n, j)) for j in range(1, n + 1)]


def _aspc(n: int) -> list[float]:
    """Kolafa's ASPC predictor with k = n - 2 (k = 0 is linear extrapolation)."""
    if n == 1:
        return [1.0]
    k = n - 2
    return [(-1) ** (j + 1) * j * comb(2 * k + 4, k + 2 - j) / comb(2 * k + 2, k + 1) for j in range(1, k + 3)]


@dataclass(frozen=True)
class Predictor:
    name: str
    history: int  # fixed points it combines once the history is long enough
    coefficients: Callable[[int], list[float]]  # n available points -> n coefficients, newest first


PREDICTORS: dict[str, Predictor] = {
    p.name: p
    for p in (
        Predictor("last", 1, _polynomial),
        Predictor("linear", 2, _polynomial),
        Predictor("quadratic", 3, _polynomial),
        Predictor("aspc", 4, _aspc),
    )
}


def get_predictor(name: str, where: str = "warm_start") -> Predictor:
    if name not in PREDICTORS:
        raise ValueError(f"{where}: unknown warm-start predictor {name!r}; choices: {', '.join(PREDICTORS)}")
    return PREDICTORS[name]


class FixedPointHistory:
    """The last few fixed points of ONE system (bounded), and the prediction for its next frame.

    `t` is the frame id (any increasing number); None means "the frame after the last one".
    """

    def __init__(self, predictor: str = "last"):
        self.predictor = get_predictor(predictor)
        self._points: deque = deque(maxlen=self.predictor.history)
        self._times: deque = deque(maxlen=self.predictor.history)

    def __len__(self) -> int:
        return len(self._points)

    @property
    def latest(self):
        return self._points[-1] if self._points else None

    @property
    def points(self) -> tuple:
        """The stored fixed points, oldest first."""
        return tuple(self._points)

    @property
    def latest_time(self):
        return self._times[-1] if self._times else None

    def clear(self) -> None:
        self._points.clear()
        self._times.clear()

    def _follows(self, t) -> bool:
        """Whether frame `t` continues the history at its spacing (unknown ids always do)."""
        last = self.latest_time
        if t is None or last is None:
            return True
        if t <= last:
            return False
        return len(self._times) < 2 or self._times[-2] is None or t - last == last - self._times[-2]

    def push(self, z, t=None) -> None:
        if not self._follows(t):
            self.clear()  # never extrapolate across a jump: start a new history here
        self._points.append(z.detach())
        self._times.append(t)

    def predict(self, t=None):
        """Initial guess for frame `t` (None: the next one); None when the history is empty."""
        if not self._points:
            return None
        n = len(self._points) if self._follows(t) else 1
        if n == 1:
            return self._points[-1]
        coefficients = self.predictor.coefficients(n)
        newest_first = list(self._points)[::-1]
        z = newest_first[0] * coefficients[0]
        for c, point in zip(coefficients[1:], newest_first[1:]):
            z.add_(point, alpha=c)
        return z
