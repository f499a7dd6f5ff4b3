"""What a statistics pass computes: the column names, the activations and :class:`StatsSpec`.

A module of its own so that every backend (``stats.py``'s torch backend and dispatch, ``triton_stats.py``,
``cpu_stats.py``) imports it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

COLUMNS = (
    "pg", "p", "pp", "g", "gg", "absdiff", "sqerr_pos", "sqerr_neg",
    "ce", "focal", "ce_pow", "map_ce", "map_p", "map_sqerr", "count", "sigmoid_focal",
    "aux_pg", "aux_g",
)
# The columns over the target's second label map (Target.aux_labels: a skeleton, say): with it
# aux_pg = Σ p·m·[aux = c]·m and aux_g = Σ m·[aux = c] (m the primary labels' ignore mask); without one, 0.
AUX_COLUMNS = ("aux_pg", "aux_g")
ACTIVATIONS = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class StatsSpec:
    """What to sum. ``activation``: softmax over classes, sigmoid per class, or none (input is p)."""

    activation: str
    columns: Tuple[str, ...]
    gamma: float = 2.0  # focal exponent
    alpha: Optional[float] = None  # MONAI focal alpha (scalar form)
    ce_exponent: float = 0.3  # ELL's gamma_CE
    log_eps: float = 0.0  # activation 'none': log(max(p, eps)); 0 means plain log

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        unknown = [c for c in self.columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown statistics columns {unknown}; known: {COLUMNS}")
