"""The statistics of a study, pure Python: paired t-intervals over seeds and the verdict per (model, stock) pair."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ultra_vil.study.models import baseline_tag


NA = "n/a"


METRICS = ["map50", "map50_95", "precision", "recall"]


COLUMNS = ["model", "seed", "params", "gflops", *METRICS, "latency_ms_torch", "latency_ms_onnx",
           "train_s_per_epoch", "peak_mem_mb"]  # fmt: skip


CONFIDENCE = 0.95


DECIDING_METRIC = "map50_95"  # the verdict's metric (COCO's primary); mAP50's interval is reported beside it


DIFF_METRICS = ("map50_95", "map50")


COST_COLUMNS = ("latency_ms_torch", "latency_ms_onnx", "train_s_per_epoch", "peak_mem_mb")


# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (standard tables); above 30 a Cornish-Fisher series
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the half-width factor of a two-sided 95% t-interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # normal quantile; series in 1/df (Abramowitz & Stegun 26.7.5), error < 1e-4 for df > 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _number(v) -> float | None:
    if v is None or v == NA or v == "":
        return None
    x = float(v)
    return x if math.isfinite(x) else None


@dataclass
class Interval:
    """Mean of the paired differences (ViL - stock) and its 95% t-interval over n seeds (lo = hi = None if n < 2)."""

    n: int
    mean: float | None
    std: float | None
    lo: float | None
    hi: float | None

    def text(self, digits: int = 3) -> str:
        if self.mean is None:
            return "no paired seeds"
        if self.lo is None:
            return f"{self.mean:+.{digits}f} (1 seed, no interval)"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired_interval(diffs: list[float]) -> Interval:
    """Mean and two-sided 95% t-interval of per-seed differences."""
    n = len(diffs)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = statistics.fmean(diffs)
    if n == 1:
        return Interval(1, mean, None, None, None)
    std = statistics.stdev(diffs)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def verdict(interval: Interval) -> str:
    """'better', 'worse' or 'no difference detectable with N seeds': the interval decides, never the mean alone."""
    if interval.n < 2 or interval.lo is None:
        seeds = f"{interval.n} seed" if interval.n == 1 else f"{interval.n} seeds"
        return f"no difference detectable with {seeds} (an interval needs >= 2 paired seeds; nothing is claimed)"
    if interval.lo > 0:
        return "better"
    if interval.hi < 0:
        return "worse"
    return f"no difference detectable with {interval.n} seeds"


def paired(rows: list[dict], vil: str, stock: str, column: str) -> list[tuple[int, float, float]]:
    """(seed, vil value, stock value) for every seed where both models have a number in `column`."""
    by_seed = {}
    for r in rows:
        if r["model"] in (vil, stock):
            by_seed.setdefault(int(r["seed"]), {})[r["model"]] = _number(r.get(column))
    out = []
    for seed in sorted(by_seed):
        a, b = by_seed[seed].get(vil), by_seed[seed].get(stock)
        if a is not None and b is not None:
            out.append((seed, a, b))
    return out


@dataclass
class Comparison:
    """One ViL model against its stock baseline."""

    vil: str
    stock: str
    diffs: dict[str, Interval]  # metric -> interval of ViL - stock
    ratios: dict[str, tuple[int, float | None, float | None, float | None, float | None]]  # n, mean, std, min, max
    verdict: str

    def line(self) -> str:
        d = self.diffs
        return (f"- **{self.vil} vs {self.stock}: {self.verdict}** (mAP50-95 difference {d['map50_95'].text()}, "
                f"mAP50 {d['map50'].text()}; model - stock, mean [95% paired t-interval] over "
                f"{d[DECIDING_METRIC].n} seed(s))")  # fmt: skip


def compare_pair(rows: list[dict], vil: str, stock: str) -> Comparison:
    diffs = {m: paired_interval([a - b for _, a, b in paired(rows, vil, stock, m)]) for m in DIFF_METRICS}
    ratios = {}
    for col in COST_COLUMNS:
        rs = [a / b for _, a, b in paired(rows, vil, stock, col) if b > 0]
        if rs:
            ratios[col] = (len(rs), statistics.fmean(rs), statistics.stdev(rs) if len(rs) > 1 else None, min(rs),
                           max(rs))  # fmt: skip
        else:
            ratios[col] = (0, None, None, None, None)
    return Comparison(vil, stock, diffs, ratios, verdict(diffs[DECIDING_METRIC]))


def pairs_of(tags: list[str], baselines: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(vil tag, stock tag) for every non-stock tag: the given baseline, else the same generation and scale."""
    baselines = baselines or {}
    stock = {t for t in tags if baseline_tag(t) == t}
    out = []
    for t in tags:
        if t in stock:
            continue
        base = baselines.get(t) or baseline_tag(t)
        if base in stock:
            out.append((t, base))
    return out


def compare_rows(rows: list[dict], baselines: dict[str, str] | None = None) -> list[Comparison]:
    tags = list(dict.fromkeys(r["model"] for r in rows))
    return [compare_pair(rows, vil, stock) for vil, stock in pairs_of(tags, baselines)]


def read_rows(path: Path | str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
