"""The search loop: latency grid -> predictor -> regularised evolution with proxy training.

1. Grid: the registry's hand-picked small models, the smallest point of each family, and candidates
   spread over the space's range of FLOPs are measured on the target (through the per-device
   cache) and the latency predictor (per-operation table sum, `latency.LatencyPredictor`) is
   fitted; its error on them, each held out of the fit (leave-one-out), is reported.
2. Evolution (Real et al., AAAI 2019, "regularised evolution"): a population of the last
   `population` trained candidates; each step takes the best of `tournament` random members,
   mutates one gene (or the family), and evaluates the child. Evaluation: predicted latency over
   the budget -> rejected unmeasured; measured latency over the budget -> rejected untrained;
   otherwise proxy-trained, its validation Dice recorded. Every new measurement refits the
   predictor; the error of each prediction made before its measurement is kept too.
3. It stops when the time budget would be exceeded by one more proxy training.

Resumable: the search is a deterministic function of its seed and of the outcomes recorded in
the state file; a resumed search replays the recorded outcomes (no measuring, no training) and goes
on from the first candidate without one, with the time already spent counted.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unetkit.errors import ConfigError
from unetkit.io.atomic import atomic_path
from unetkit.search.latency import LatencyPredictor, error_stats, held_out_errors
from unetkit.search.space import Candidate, SearchSpace, reference_name, to_candidate

STATE_FILE = "search_state.json"
STATE_VERSION = 2  # 2: features are per-operation table sums (the predictor of version 1 differed)


@dataclass
class Evaluators:
    """What the loop calls (real ones in `unetkit.search.api`; fakes in the tests)."""

    features: Callable[[Candidate], dict[str, float]]  # predictor features (+ "gflop", "params")
    measure: Callable[[Candidate, float | None], dict[str, Any]]  # latency record {"seconds", "cached", ...}
    train: Callable[[Candidate], dict[str, Any]]  # proxy training {"dice", "seconds", "run_dir"}
    log: Callable[[str], None] = lambda s: None
    clock: Callable[[], float] = time.monotonic
    confirm: Callable[[Candidate], dict[str, Any]] | None = None  # a separate timing run of the chosen one


@dataclass
class SearchSettings:
    budget_s: float  # latency budget (seconds per batch)
    time_budget_s: float  # wall time for the whole search
    seed: int = 0
    grid: int = 12  # candidates measured before the search (references included)
    population: int = 6
    tournament: int = 3
    cap_factor: float = 2.0  # a timing run slower than cap_factor x budget stops early (search)
    grid_cap_factor: float = 10.0  # the same for the grid, which should span a wide range to fit on
    pool: int = 96  # random points whose features are computed to place the grid
    max_trained: int | None = None  # stop after this many proxy-trained candidates
    identity: dict = field(default_factory=dict)  # what a resumed search must match


class SearchState:
    """The state file: settings identity, time spent, and one record per candidate seen."""

    def __init__(self, path: Path, identity: dict[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.elapsed_s = 0.0
        self.identity = identity
        if resume:
            if not self.path.is_file():
                raise ConfigError(f"{self.path}: nothing to resume (no search state)")
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"{self.path}: unreadable search state ({err})") from None
            if data.get("version") != STATE_VERSION:
                raise ConfigError(f"{self.path}: search state version {data.get('version')}, expected {STATE_VERSION}")
            if data.get("identity") != identity:
                diff = sorted(k for k in set(identity) | set(data.get("identity", {}))
                              if identity.get(k) != data.get("identity", {}).get(k))
                raise ConfigError(f"{self.path}: this search was run with other settings ({', '.join(diff)}); "
                                  "resume with the same options or choose another output folder")
            self.records = {r["key"]: r for r in data["records"]}
            self.elapsed_s = float(data.get("elapsed_s", 0.0))
        elif self.path.exists():
            raise ConfigError(f"{self.path.parent} already holds a search; pass --resume to continue it "
                              "or choose another output folder")
        elif self.path.parent.is_dir() and any(self.path.parent.iterdir()):
            raise ConfigError(f"{self.path.parent} exists and is not empty; choose a new output folder")

    def save(self, extra: dict[str, Any] | None = None) -> None:
        data = {"version": STATE_VERSION, "identity": self.identity, "elapsed_s": round(self.elapsed_s, 3),
                "records": list(self.records.values()), **(extra or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1))


class Search:
    def __init__(self, space: SearchSpace, settings: SearchSettings, state: SearchState, ev: Evaluators) -> None:
        self.space, self.s, self.state, self.ev = space, settings, state, ev
        self.rng = random.Random(settings.seed)
        self.predictor: LatencyPredictor | None = None
        self.measured: list[dict[str, Any]] = []  # records with a measurement, in order
        self.population: list[dict[str, Any]] = []
        self.session_start = ev.clock()
        self.prior_elapsed = state.elapsed_s
        self.replay_elapsed = 0.0  # time spent up to the last replayed record
        self.replaying = True
        self.counts = {"replayed": 0, "measured": 0, "trained": 0}
        self.done: dict[str, dict[str, Any]] = {}  # candidates evaluated in this run (replayed or new)
        self._features: dict[str, dict[str, float]] = {}
        self.pool: list[Candidate] = []

    # ---- time -----------------------------------------------------------------------------------
    def spent(self) -> float:
        if self.replaying:
            return self.replay_elapsed
        return self.prior_elapsed + self.ev.clock() - self.session_start

    def _start_new_work(self) -> None:
        """The replay is over: from here on time is this session's clock plus the time spent before."""
        if self.replaying:
            self.replaying = False
            self.session_start = self.ev.clock()
            self.prior_elapsed = max(self.prior_elapsed, self.replay_elapsed)

    def _finish(self, record: dict[str, Any]) -> dict[str, Any]:
        self._start_new_work()
        record["elapsed_s"] = round(self.spent(), 3)
        self.state.records[record["key"]] = record
        self.state.elapsed_s = record["elapsed_s"]
        self.state.save()
        return record

    # ---- one candidate ------------------------------------------------------------------------
    def _known(self, candidate: Candidate) -> dict[str, Any] | None:
        record = self.state.records.get(candidate.key)
        if record is not None and record["status"] != "failed":
            self.counts["replayed"] += self.replaying
            self.replay_elapsed = max(self.replay_elapsed, record.get("elapsed_s", 0.0))
            if record.get("measured_s") is not None:
                self._add_measurement(record)
            return record
        return None

    def features(self, candidate: Candidate) -> dict[str, float]:
        if candidate.key not in self._features:
            known = self.state.records.get(candidate.key)
            self._features[candidate.key] = known["features"] if known else self.ev.features(candidate)
        return self._features[candidate.key]

    def predicted(self, candidate: Candidate) -> float | None:
        return self.predictor.predict(self.features(candidate)) if self.predictor else None

    def _new_record(self, candidate: Candidate) -> dict[str, Any]:
        feats = self.features(candidate)
        return {"key": candidate.key, "arch": candidate.arch, "kwargs": candidate.kwargs, "genes": candidate.genes,
                "label": candidate.label(), "reference": reference_name(candidate.genes),
                "features": feats, "gflop": feats.get("gflop", 0.0), "params": int(feats.get("params", 0)),
                "predicted_s": self.predictor.predict(feats) if self.predictor else None,
                "measured_s": None, "dice": None, "status": "new"}

    def _add_measurement(self, record: dict[str, Any]) -> None:
        if record.get("capped") or any(r["key"] == record["key"] for r in self.measured):
            return  # a timing cut short is an upper bound, not a fit point
        self.measured.append(record)
        if len(self.measured) >= 2:
            self.predictor = LatencyPredictor.fit([r["features"] for r in self.measured],
                                                  [r["measured_s"] for r in self.measured])

    def measure(self, candidate: Candidate, record: dict[str, Any] | None = None, cap_factor: float | None = None
                ) -> dict[str, Any]:
        """A record with the measured latency (no training)."""
        record = record or self._new_record(candidate)
        lat = self.ev.measure(candidate, (cap_factor or self.s.cap_factor) * self.s.budget_s)
        record.update(measured_s=lat["seconds"], capped=bool(lat.get("capped")), cached_latency=bool(lat.get("cached")))
        self.counts["measured"] += 0 if lat.get("cached") else 1
        self._add_measurement(record)
        return record

    def evaluate(self, candidate: Candidate) -> dict[str, Any]:
        """Predict, measure, proxy-train as far as the budget allows; the finished record."""
        record = self._evaluate(candidate)
        self.done[record["key"]] = record
        return record

    def _evaluate(self, candidate: Candidate) -> dict[str, Any]:
        known = self._known(candidate)
        if known is not None and known["status"] in ("trained", "predicted_over", "measured_over"):
            return known
        self._start_new_work()
        record = known or self._new_record(candidate)
        if record.get("measured_s") is None:
            if record["predicted_s"] is not None and record["predicted_s"] > self.s.budget_s:
                record["status"] = "predicted_over"
                return self._finish(record)
            self.measure(candidate, record)
        if record["measured_s"] > self.s.budget_s:
            record["status"] = "measured_over"
            self.ev.log(f"  {record['label']}: measured {record['measured_s'] * 1000:.1f} ms > budget, not trained")
            return self._finish(record)
        self.ev.log(f"  {record['label']}: {record['measured_s'] * 1000:.1f} ms, proxy training ...")
        try:
            result = self.ev.train(candidate)
        except (ValueError, RuntimeError) as err:  # a candidate that cannot train is recorded, not fatal
            record.update(status="failed", error=f"{type(err).__name__}: {str(err)[:300]}")
            self.ev.log(f"  {record['label']}: training failed ({record['error']})")
            return self._finish(record)
        self.counts["trained"] += 1
        record.update(status="trained", dice=result["dice"], proxy_seconds=result["seconds"],
                      run_dir=result.get("run_dir"))
        self.ev.log(f"  {record['label']}: val Dice {record['dice']:.4f} ({result['seconds']:.0f} s)")
        return self._finish(record)

    # ---- phases -------------------------------------------------------------------------------
    def grid(self) -> list[dict[str, Any]]:
        """Measure the references and candidates spread over the pool's FLOPs; grid records are
        kept with status 'grid' unless already known (they may be trained later)."""
        refs = [to_candidate(g) for g in self.space.references().values()]
        refs += [to_candidate(g) for g in self.space.edge_cases()[::2]]  # the smallest of each family
        pool = [to_candidate(self.space.sample(self.rng)) for _ in range(self.s.pool)]
        seen, unique = set(), []
        for c in pool:
            if c.key not in seen:
                seen.add(c.key)
                unique.append(c)
        flops = {c.key: self._flops(c) for c in unique}
        unique.sort(key=lambda c: flops[c.key])
        self.pool = unique
        need = max(0, self.s.grid - len(refs))
        picks = [unique[round(i * (len(unique) - 1) / max(1, need - 1))] for i in range(need)] if need else []
        grid, keys = [], set()
        for c in refs + picks:
            if c.key in keys:
                continue
            keys.add(c.key)
            known = self._known(c)
            if known is not None and known.get("measured_s") is not None:
                grid.append(known)
                continue
            self._start_new_work()
            record = self.measure(c, cap_factor=self.s.grid_cap_factor)
            record["status"] = "grid" if record["measured_s"] <= self.s.budget_s else "measured_over"
            record["grid"] = True
            grid.append(self._finish(record))
            self.ev.log(f"  grid {record['label']}: {record['measured_s'] * 1000:.1f} ms"
                        f"{' (cached)' if record.get('cached_latency') else ''}")
        return grid

    def _flops(self, candidate: Candidate) -> float:
        return self.features(candidate).get("gflop", 0.0)

    def predictor_error(self) -> dict[str, Any]:
        """The predictor's relative error on measured candidates held out of its fit
        (leave-one-out), and the error of the predictions made before their measurement
        (n, median, 90th percentile, max)."""
        held = held_out_errors([r["features"] for r in self.measured], [r["measured_s"] for r in self.measured])
        prospective = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in self.state.records.values()
                       if r.get("predicted_s") is not None and r.get("measured_s") is not None
                       and not r.get("capped")]
        return {"held_out": {**error_stats([r["error"] for r in held]), "method": "leave-one-out"},
                "before_measuring": error_stats(prospective)}

    def run(self) -> dict[str, Any]:
        ev = self.ev
        ev.log(f"latency grid: measuring {self.s.grid} candidates (cached per device) ...")
        grid = self.grid()
        if self.predictor is None:
            raise ConfigError("the latency grid gave fewer than 2 usable measurements; raise the latency budget")
        err = self.predictor_error()["held_out"]
        if err["median"] is not None:
            ev.log(f"latency predictor: error on {err['n']} held-out grid candidates (leave-one-out): median "
                   f"{100 * err['median']:.1f}%, max {100 * err['max']:.1f}%")
        # initial population: grid members within the budget, then random feasible samples
        ev.log("search: proxy-training candidates within the budget ...")
        first = [r for r in grid if r["measured_s"] <= self.s.budget_s]
        first.sort(key=lambda r: (r.get("reference") is None, -r["measured_s"]))
        for r in first[: self.s.population]:
            if not self._time_left():
                break
            self._add(self.evaluate(_candidate(r)))
        feasible = [c for c in self.pool if c.key not in self.done and self.predicted(c) <= self.s.budget_s]
        self.rng.shuffle(feasible)
        ev.log(f"  {len(feasible)} of {len(self.pool)} sampled candidates predicted within the budget")
        while len(self.population) < self.s.population and self._time_left() and feasible:
            c = feasible.pop()
            if c.key not in self.done and self.predicted(c) <= self.s.budget_s:
                self._add(self.evaluate(c))
        if not self.population:
            ev.log("search: no candidate met the budget when measured; nothing to evolve")
        # evolution
        stale = 0
        while self._time_left() and self.population and stale < 100:
            parent = max(self.rng.sample(self.population, min(self.s.tournament, len(self.population))),
                         key=lambda r: r["dice"])
            child = to_candidate(self.space.mutate(parent["genes"], self.rng))
            if child.key in self.done:
                stale += 1
                continue
            stale = 0
            self._add(self.evaluate(child))
        if stale >= 100:
            ev.log("search: no unseen candidate within the budget left near the population")
        return {"records": list(self.state.records.values()), "predictor": self.predictor,
                "predictor_error": self.predictor_error(), "counts": dict(self.counts),
                "elapsed_s": self.spent()}

    def _add(self, record: dict[str, Any]) -> None:
        if record["status"] == "trained":
            self.population.append(record)
            if len(self.population) > self.s.population:
                self.population.pop(0)

    def _time_left(self) -> bool:
        """Room for one more candidate: the median proxy training so far (or 0 before any)."""
        trained = [r["proxy_seconds"] for r in self.done.values() if r.get("proxy_seconds")]
        if self.s.max_trained is not None and len(trained) >= self.s.max_trained:
            return False
        estimate = statistics.median(trained) if trained else 0.0
        return self.spent() + estimate <= self.s.time_budget_s


def _candidate(record: dict[str, Any]) -> Candidate:
    return to_candidate(record["genes"])
