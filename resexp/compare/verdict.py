"""The verdict: the findings of He et al. 2015, sec. 4.2, asked of a study's final errors (the
last evaluation, averaged over completed seeds), each against the seed noise (``judge``)."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Literal

from resexp.compare.runs import Network, Stat, final_values

Status = Literal["PASS", "FAIL", "within noise", "not tested"]
SIGNIFICANCE = 0.05  # two-sided p-value of Welch's t-test below which a difference is real
METRICS = ("train_error", "test_error")


@dataclass(frozen=True)
class Check:
    """One finding asked of the study, with its answer and the numbers behind it.

    status: PASS or FAIL (the difference goes the paper's way or the other way and exceeds the
    seed noise, or cannot be tested against it with one seed: ``noise`` says which), ``within
    noise`` (two or more seeds a side and no significant difference), ``not tested`` (the
    evidence is incomplete: a network without a completed run, or seeds still unfinished).
    """

    key: str
    title: str
    status: Status
    detail: str
    noise: str = ""  # the test behind the status: Welch's t and its p, or why untested


@dataclass
class Verdict:
    """Every check, and the two answers Figure 6 gives, in one headline."""

    checks: list[Check]
    degradation: bool | None  # plain nets train worse when deeper (None: not tested)
    fixed: bool | None  # deeper ResNets are no worse, and beat their plain twins (None: untested)
    headline: str


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test of mean(a) = mean(b); None when a
    side has fewer than two values. Seeds are few (2 to 5), so a t-test, not a bootstrap."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return _betainc(df / 2, 0.5, df / (df + t * t))  # = P(|T_df| >= |t|)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1.0 / d
        c = 1.0 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


def judge(networks: list[Network]) -> Verdict:
    """Ask the study the findings of He et al. 2015, sec. 4.2, each on its own line.

    For each plain family, deepest against shallowest (56 against 20 when both exist): training
    error rises with depth (the degradation problem), test error rises too, and, with 3 or more
    depths, training error rises at every step. For each residual family: training and test
    error do not rise with depth (the paper: they fall). For each residual net: lower training
    and test error than its plain twin. Each line says how many completed seeds stand on each
    side and whether the difference exceeds the seed noise (Welch's t-test, two-sided, p <
    SIGNIFICANCE; with one seed a side it is untested). A network with unfinished, failed or
    diverged seeds, or none completed, leaves its findings ``not tested``.
    """
    main_plain, main_residual = _main_family(networks, False), _main_family(networks, True)
    present = {(n.residual, n.family) for n in networks}
    families = sorted(present | {(False, main_plain), (True, main_residual)})
    checks: list[Check] = []
    for residual, family in families:
        nets = sorted((n for n in networks if n.family == family), key=lambda n: n.depth)
        checks += _depth_checks(nets, family, residual)
    by_arch = {n.arch: n for n in networks}
    for net in (n for n in networks if n.residual):
        plain = by_arch.get(net.twin)
        if plain is None:
            title = f"{net.label} below its plain twin (training and test error)"
            checks.append(Check(f"twin-{net.arch}", title, "not tested", f"no {net.twin} runs"))
        else:
            title = f"{net.label} below {plain.label} (training and test error)"
            checks.append(_compare(f"twin-{net.arch}", title, net, plain, lower=True))

    found = next(c for c in checks if c.key == f"degradation-{main_plain}")
    degradation = None if found.status == "not tested" else found.status == "PASS"
    residual_keys = [f"depth-train-{main_residual}", f"depth-test-{main_residual}"]
    twins = [c for c in checks if c.key.startswith(f"twin-{main_residual}-")]
    needed = [c for c in checks if c.key in residual_keys] + twins
    if not twins or any(c.status == "not tested" for c in needed):
        fixed = None
    else:  # a residual depth check within noise still means "does not rise"
        fixed = all(c.status != "FAIL" for c in needed[:2]) and all(
            c.status == "PASS" for c in twins
        )
    return Verdict(checks, degradation, fixed, _headline(checks, degradation, fixed))


def _main_family(networks: list[Network], residual: bool) -> str:
    """resnet (or plain), else the first residual (plain) family the study has."""
    default = "resnet" if residual else "plain"
    families = [n.family for n in networks if n.residual == residual]
    return default if default in families or not families else families[0]


def _depth_checks(nets: list[Network], family: str, residual: bool) -> list[Check]:
    """``judge``'s depth checks of one family: deepest against shallowest, and ``_monotonic``."""
    name = nets[0].label.rsplit("-", 1)[0] if nets else {"resnet": "ResNet"}.get(family, family)
    kinds = ("depth-train", "depth-test") if residual else ("degradation", "degradation-test")
    keys = [f"{kind}-{family}" for kind in kinds]
    if len(nets) < 2:
        have = ", ".join(n.label for n in nets) or "none"
        why = f"needs 2 depths of {name} with runs (have: {have})"
        if residual:
            titles = [f"deeper {name} trains no worse", f"deeper {name} tests no worse"]
        else:
            titles = [f"deeper {name} trains worse (degradation)", f"deeper {name} tests worse"]
        return [Check(k, t, "not tested", why) for k, t in zip(keys, titles, strict=True)]
    depths = {n.depth: n for n in nets}
    paper_pair = 20 in depths and 56 in depths
    shallow, deep = (depths[20], depths[56]) if paper_pair else (nets[0], nets[-1])
    d, s = deep.label, shallow.label
    if residual:
        titles = [f"{d} trains no worse than {s} (paper: better)",
                  f"{d} tests no worse than {s} (paper: better)"]  # fmt: skip
    else:
        titles = [f"degradation: {d} trains worse than {s}", f"{d} tests worse than {s}"]
    checks = [
        _compare(key, title, deep, shallow, lower=residual, metrics=(metric,))
        for key, title, metric in zip(keys, titles, METRICS, strict=True)
    ]
    if not residual and len(nets) >= 3:
        checks.append(_monotonic(nets, family, name))
    return checks


def _monotonic(nets: list[Network], family: str, name: str) -> Check:
    """Whether a plain family's mean training error rises at every step in depth."""
    key, title = f"monotonic-{family}", f"{name} training error rises with every depth"
    errors = [n.train_error.mean if n.train_error else math.nan for n in nets]
    steps = f"{nets[0].depth}: {errors[0]:.2f}" + "".join(
        f" {'<' if b > a else '>='} {net.depth}: {b:.2f}"
        for (a, b), net in zip(itertools.pairwise(errors), nets[1:], strict=True)
    )
    reasons = [why for why in map(_incomplete, nets) if why]
    if reasons:
        return Check(key, title, "not tested", f"training %: {steps} ({'; '.join(reasons)})")
    rising = all(b > a for a, b in itertools.pairwise(errors))
    return Check(key, title, "PASS" if rising else "FAIL", f"training %: {steps}", "means only")


def _compare(
    key: str, title: str, a: Network, b: Network, lower: bool, metrics: tuple[str, ...] = METRICS
) -> Check:
    """Is ``a`` below (``lower``) or above ``b`` in each of ``metrics``, beyond the seed noise?"""
    reasons = [why for why in (_incomplete(a), _incomplete(b)) if why]
    detail = _numbers(a, b)
    if reasons:
        return Check(key, title, "not tested", f"{detail} ({'; '.join(reasons)})")
    values = [(final_values(a.used, m), final_values(b.used, m)) for m in metrics]
    results = [_direction(va, vb, lower) for va, vb in values]
    noise = "; ".join(_noise(va, vb, m) for (va, vb), m in zip(values, metrics, strict=True))
    status: Status = "within noise"
    if "FAIL" in results:
        status = "FAIL"
    elif all(r == "PASS" for r in results):
        status = "PASS"
    return Check(key, title, status, detail, noise)


def _incomplete(net: Network) -> str | None:
    """Why ``net``'s numbers cannot stand in a finding yet, or None when they can."""
    done = sum(r.status == "completed" for r in net.runs)
    if done == 0:
        at = ", ".join(f"{r.path.name} {r.status} at iteration {r.iterations:,}" for r in net.runs)
        return f"{net.label} has no completed run ({at})"
    if done < len(net.runs):
        return f"{net.label}: {done} of {len(net.runs)} seeds completed ({net.unfinished_counts})"
    return None


def _direction(a: list[float], b: list[float], lower: bool) -> Status:
    """``_compare``'s answer for one metric, from the means of ``a`` and ``b``."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    p = welch_p(a, b)
    if p is not None and p >= SIGNIFICANCE:
        return "within noise"
    expected = diff < 0 if lower else diff > 0
    return "PASS" if expected else "FAIL"


def _noise(a: list[float], b: list[float], metric: str) -> str:
    """The seed-noise test of one metric, in words: Welch's p, or why it is untested."""
    kind = "training" if metric == "train_error" else "test"
    p = welch_p(a, b)
    if p is None:
        return f"{kind}: untested ({len(a)} vs {len(b)} seeds; 2+ a side needed)"
    return f"{kind}: Welch's t, p = {p:.2g} ({len(a)} vs {len(b)} seeds)"


def _numbers(a: Network, b: Network) -> str:
    """'training 3.10% (3 seeds) vs 1.20% (3 seeds); test ...': final errors, mean over seeds."""
    return (
        f"training {_pct(a.train_error)} vs {_pct(b.train_error)}; "
        f"test {_pct(a.test_error)} vs {_pct(b.test_error)}"
    )


def _pct(stat: Stat | None) -> str:
    if stat is None:
        return "n/a"
    return f"{stat.mean:.2f}% ({stat.n} seed{'s' if stat.n != 1 else ''})"


def _headline(checks: list[Check], degradation: bool | None, fixed: bool | None) -> str:
    """One sentence: is Figure 6 reproduced (degradation, and residual learning fixing it)?"""
    judged = [c for c in checks if c.status in ("PASS", "FAIL", "within noise")]
    untested = [c for c in judged if "untested" in c.noise]
    note = ""
    if untested and len(untested) == len(judged):
        note = " (one seed a side: differences not tested against seed noise)"
    elif untested:
        note = f" ({len(untested)} of {len(judged)} checks have one seed a side: untested)"
    if degradation is None or fixed is None:
        return "Not enough completed runs for a verdict: see the checks marked not tested." + note
    first = (
        "the deeper plain net trains worse (degradation)"
        if degradation
        else "the deeper plain net does not train worse (no degradation)"
    )
    second = (
        "residual learning fixes it (the deeper ResNet is no worse, each ResNet beats its "
        "plain twin)"
        if fixed
        else "residual learning does not fix it here (see the checks that are not PASS)"
    )
    verdict = "Figure 6 reproduced" if degradation and fixed else "Figure 6 not reproduced"
    return f"{verdict}: {first}; {second}.{note}"
