"""The published numbers a study is compared with.

He et al. 2015, "Deep Residual Learning for Image Recognition", sec. 4.2: 64k iterations, Figure
6's grid, the ResNets' test errors (Table 6). Plain nets, which the paper shows as curves only,
from reproductions: github.com/nabla0001/resnet (mean of 5 runs of 64k iterations) and
github.com/a-martyn/resnet (best epoch). PreAct-110: He et al. 2016, "Identity Mappings in Deep
Residual Networks", Table 3.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_ITERATIONS = 64_000  # He et al. 2015, sec. 4.2: training stops at 64k iterations
GRID_DEPTHS = (20, 32, 44, 56)  # He et al. 2015, Figure 6 (110 is shown for ResNets only)


@dataclass(frozen=True)
class Reference:
    """A published test error (%) to set beside a network's."""

    test_error: float
    std: float | None
    source: str


_TABLE6 = "He et al. 2015, Table 6"
_NABLA = "nabla0001/resnet (mean of 5 runs, 64k it.)"
_MARTYN = "a-martyn/resnet (best epoch)"
REFERENCES: dict[str, Reference] = {
    "resnet-20": Reference(8.75, None, _TABLE6),
    "resnet-32": Reference(7.51, None, _TABLE6),
    "resnet-44": Reference(7.17, None, _TABLE6),
    "resnet-56": Reference(6.97, None, _TABLE6),
    "resnet-110": Reference(6.43, None, f"{_TABLE6} (best of 5; mean 6.61 ± 0.16)"),
    "resnet-1202": Reference(7.93, None, _TABLE6),
    # The paper gives plain nets as curves only (Figure 6).
    "plain-20": Reference(9.78, 0.13, _NABLA),
    "plain-32": Reference(9.92, None, _MARTYN),
    "plain-44": Reference(11.35, None, _MARTYN),
    "plain-56": Reference(12.95, 0.22, _NABLA),
    "preact-110": Reference(6.37, None, "He et al. 2016, Identity Mappings, Table 3"),
}
