"""Architecture search: the space builds, latency is cached per device and predicted, the search
respects the budget and resumes without re-measuring or re-training."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch

from unetkit.errors import ConfigError
from unetkit.models import create_model
from unetkit.models.summary import count_flops
from unetkit.search import parse_duration, parse_latency, parse_size, search
from unetkit.search.engine import STATE_FILE, Evaluators
from unetkit.errors import DataError
from unetkit.search import latency as latency_mod
from unetkit.search.latency import (LatencyCache, LatencyPredictor, LatencySpec, candidate_features,
                                    candidate_ops, held_out_errors, time_runs)
from unetkit.search.pareto import pareto_front
from unetkit.search.space import FAMILIES, REFERENCES, SearchSpace, check_genes, to_candidate


# ---- the space ------------------------------------------------------------------------------------
def _space_sample() -> list[dict]:
    space = SearchSpace()
    rng = random.Random(1234)
    return space.edge_cases() + [space.sample(rng) for _ in range(6)]


@pytest.mark.parametrize("genes", _space_sample(), ids=lambda g: to_candidate(g).label())
def test_candidates_build_and_run_forward(genes):
    cand = to_candidate(genes)
    torch.manual_seed(0)
    model = cand.build(in_channels=1, num_classes=1).eval()
    assert model.unetkit_arch == cand.arch  # an ordinary registry config
    rebuilt = create_model(cand.arch, spatial_dims=2, in_channels=1, num_classes=1, **cand.kwargs)
    assert [v.shape for v in rebuilt.state_dict().values()] == [v.shape for v in model.state_dict().values()]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 40, 52))  # not a multiple of any stride
    assert out.shape == (1, 1, 40, 52) and torch.isfinite(out).all()


def test_every_point_of_the_space_is_a_valid_config():
    space = SearchSpace()
    points = list(space)
    assert len(points) == space.size() == len({to_candidate(g).key for g in points})
    for g in points:
        check_genes(g)


def test_references_are_the_registry_presets():
    for name, genes in REFERENCES.items():
        preset = create_model(name, num_classes=1)
        cand = to_candidate(genes).build(1, 1)
        assert [v.shape for v in preset.state_dict().values()] == [v.shape for v in cand.state_dict().values()]


def test_mutation_stays_in_the_space_and_moves():
    space = SearchSpace()
    rng = random.Random(0)
    genes = space.sample(rng)
    moved = 0
    for _ in range(300):
        child = space.mutate(genes, rng)
        check_genes(child)
        moved += child != genes
        genes = child
    assert moved == 300
    with pytest.raises(ValueError, match="not in"):
        check_genes({**REFERENCES["unet-lite"], "base": 7})


# ---- latency ------------------------------------------------------------------------------------
@pytest.mark.parametrize("genes", [REFERENCES["unet-realtime"], REFERENCES["mobile-unet"],
                                   {"family": "unet++", "depth": 3, "base": 8, "mult": 2.0, "up": "transpose"},
                                   {"family": "resnet-unet", "width": 8, "stages": 2, "blocks": 1, "up": "linear"}])
def test_feature_flops_match_torch_flop_counter(genes):
    spec = LatencySpec(size=(64, 96), batch=2)
    feats = candidate_features(to_candidate(genes), spec)
    model = to_candidate(genes).build(1, 1)
    want = count_flops(model, spec.input_shape)  # torch's own FLOP counter, on real tensors
    assert (feats["dense_gflop"] + feats["depthwise_gflop"]) * 1e9 == pytest.approx(want, rel=1e-6)
    assert (feats["depthwise_gflop"] > 0) == (genes["family"] == "mobile-unet")


def _fake_op_seconds(sig: str) -> float:
    """A made-up, deterministic table entry per operation signature."""
    return 1e-4 * (1 + _h(sig, 0, 6))


def _fake_rate(cls: str, spec) -> float:
    return {"eltwise": 2e-4, "cat": 3e-4, "pool": 4e-4, "nearest": 5e-4, "linear": 6e-4}[cls]


# two candidates that share their encoder and differ in up-sampling
_SHARED = [{"family": "unet", "depth": 3, "base": 8, "mult": 2.0, "down": "maxpool", "up": up}
           for up in ("transpose", "nearest")]


def test_op_table_times_each_distinct_signature_once_and_is_cached_per_device(tmp_path):
    spec = LatencySpec(size=(32, 32))
    ops_a, ops_b = (candidate_ops(to_candidate(g), spec) for g in _SHARED)
    timed, rates = [], []

    def timer(op, spec):
        timed.append(op.sig)
        return _fake_op_seconds(op.sig)

    def rate_timer(cls, spec):
        rates.append(cls)
        return _fake_rate(cls, spec)

    cache = LatencyCache.for_device(spec, tmp_path)
    got_a = cache.op_seconds(ops_a, spec, timer, rate_timer)
    got_b = cache.op_seconds(ops_b, spec, timer, rate_timer)
    union = {op.sig for op in ops_a + ops_b if op.timed}
    assert len(timed) == len(set(timed)) and set(timed) == union  # every distinct convolution once
    assert len(timed) < sum(op.timed for op in ops_a) + sum(op.timed for op in ops_b)  # shared ones not twice
    assert sorted(rates) == sorted({op.cls for op in ops_a + ops_b if not op.timed})
    for ops, got in ((ops_a, got_a), (ops_b, got_b)):  # table latency = timed value, or bytes x class rate
        want = [_fake_op_seconds(op.sig) if op.timed else op.mbytes * _fake_rate(op.cls, spec) for op in ops]
        assert got == pytest.approx(want, rel=1e-12)

    def never(*args):
        raise AssertionError("measured again")

    assert cache.op_seconds(ops_a, spec, never, never) == got_a
    again = LatencyCache.for_device(spec, tmp_path)  # read back from the file
    assert again.path == cache.path and again.op_seconds(ops_b, spec, never, never) == got_b
    # another device fingerprint (thread count): another table, measured again
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        other = LatencyCache.for_device(spec, tmp_path)
        n = len(timed)
        other.op_seconds(ops_a, spec, timer, rate_timer)
    finally:
        torch.set_num_threads(threads)
    assert other.path != cache.path and set(timed[n:]) == {op.sig for op in ops_a if op.timed}
    # a table of a newer format is refused, not misread
    data = json.loads(cache.path.read_text())
    assert data["version"] == latency_mod.CACHE_VERSION
    cache.path.write_text(json.dumps({**data, "version": latency_mod.CACHE_VERSION + 1}))
    with pytest.raises(DataError, match="newer"):
        LatencyCache.for_device(spec, tmp_path)


def test_an_operation_that_cannot_be_timed_alone_falls_back_to_bytes(tmp_path):
    spec = LatencySpec(size=(32, 32))
    ops = candidate_ops(to_candidate(_SHARED[0]), spec)
    bad = next(op.sig for op in ops if op.timed)

    def timer(op, spec):
        if op.sig == bad:
            raise RuntimeError("no kernel")
        return _fake_op_seconds(op.sig)

    cache = LatencyCache.for_device(spec, tmp_path)
    got = cache.op_seconds(ops, spec, timer, _fake_rate)
    want = [op.mbytes * _fake_rate("eltwise", spec) if op.sig == bad else
            _fake_op_seconds(op.sig) if op.timed else op.mbytes * _fake_rate(op.cls, spec) for op in ops]
    assert got == pytest.approx(want, rel=1e-12)
    assert cache.ops[f"fp32|{bad}"]["how"].startswith("bytes (RuntimeError")
    # int8 (ONNX Runtime) networks are predicted from the fp32 table: same keys, same values
    int8 = LatencySpec(size=(32, 32), precision="int8")
    assert cache.op_seconds(ops, int8, timer, _fake_rate) == got


def test_predictor_recovers_latencies_made_from_the_op_table(tmp_path, monkeypatch):
    """Whole-network latencies generated as a * (table sum) + b * ops + c from real traces: the
    predictor fitted without a candidate predicts it (an independent sum over its trace)."""
    monkeypatch.setattr(latency_mod, "time_op", lambda op, spec: _fake_op_seconds(op.sig))
    monkeypatch.setattr(latency_mod, "time_rate", _fake_rate)
    spec = LatencySpec(size=(32, 32))
    cache = LatencyCache.for_device(spec, tmp_path)
    space, rng = SearchSpace(), random.Random(7)
    cands = list({c.key: c for c in (to_candidate(space.sample(rng)) for _ in range(14))}.values())[:12]
    a, b, c = 1.3, 2e-5, 4e-4
    feats, secs = [], []
    for cand in cands:
        ops = candidate_ops(cand, spec)
        table = sum(_fake_op_seconds(op.sig) if op.timed else op.mbytes * _fake_rate(op.cls, spec) for op in ops)
        secs.append(a * table + b * len(ops) + c)
        feats.append(candidate_features(cand, spec, cache))
        assert feats[-1]["op_sum_s"] == pytest.approx(table, rel=1e-9) and feats[-1]["ops"] == len(ops)
    rows = held_out_errors(feats, secs, folds=4, seed=0)
    assert sorted(r["index"] for r in rows) == list(range(len(cands)))
    assert max(r["error"] for r in rows) < 1e-6
    coef = LatencyPredictor.fit(feats, secs).coef  # one factor per part of the table, both a here
    assert coef["conv_s"] == pytest.approx(a, rel=1e-5) and coef["other_s"] == pytest.approx(a, rel=1e-4)
    assert coef["ops"] == pytest.approx(b, rel=1e-3)
    noisy = [s * (1.5 if i == 3 else 1.0) for i, s in enumerate(secs)]  # an outlier shows when held out
    assert next(r for r in held_out_errors(feats, noisy, folds=4) if r["index"] == 3)["error"] > 0.2


def test_held_out_candidates_are_not_in_the_fit_that_predicts_them(monkeypatch):
    rng = np.random.default_rng(0)
    feats = [{"id": i, "const": 1.0, "conv_s": float(rng.uniform(1e-3, 1e-2)), "other_s": float(rng.uniform(0, 1e-3)),
              "ops": float(rng.integers(20, 90))} for i in range(11)]
    for f in feats:
        f["op_sum_s"] = f["conv_s"] + f["other_s"]
    secs = [1.1 * f["op_sum_s"] + 1e-5 * f["ops"] for f in feats]
    seen = []
    real_fit = LatencyPredictor.fit.__func__

    class Spy:
        def __init__(self, fitted, ids):
            self.fitted, self.ids = fitted, ids

        def predict(self, f):
            seen.append((self.ids, f["id"]))
            return self.fitted.predict(f)

    monkeypatch.setattr(LatencyPredictor, "fit", classmethod(
        lambda cls, fs, ss: Spy(real_fit(cls, fs, ss), frozenset(f["id"] for f in fs))))
    for folds in (0, 3):
        seen.clear()
        rows = held_out_errors(feats, secs, folds=folds, seed=5)
        assert sorted(i for _, i in seen) == list(range(11)) == [r["index"] for r in rows]
        assert all(i not in ids for ids, i in seen)  # never fitted on the candidate it predicts
        assert len({ids for ids, _ in seen}) == (11 if folds == 0 else 3)
        assert all(len(ids) >= 11 - 4 for ids, _ in seen)  # the others are all in the fit


class FakeClock:
    def __init__(self, step: float = 0.0):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_time_runs_with_a_fake_timer():
    calls = []
    clock = FakeClock(step=0.5)  # every reading advances 0.5 s: each timed run "takes" 0.5 s
    times = time_runs(lambda: calls.append(1), repeats=4, warmup=2, clock=clock)
    assert times == [0.5] * 4 and len(calls) == 6
    calls.clear()
    assert time_runs(lambda: calls.append(1), repeats=4, warmup=0, cap_s=0.1, clock=clock) == [0.5]
    assert len(calls) == 1  # over the cap: no more runs


def _fake_measure(counter):
    def measure(candidate, spec, cap_s=None):
        counter.append(candidate.key)
        return {"seconds": 0.01 * (1 + len(candidate.key) % 7), "times": [], "capped": False}
    return measure


def test_latency_cache_round_trips_and_is_reused(tmp_path):
    spec = LatencySpec(size=(64, 64))
    a, b = to_candidate(REFERENCES["unet-lite"]), to_candidate(REFERENCES["mobile-unet"])
    calls: list[str] = []
    cache = LatencyCache.for_device(spec, tmp_path)
    first = cache.measure(a, spec, measure=_fake_measure(calls))
    assert calls == [a.key] and first["cached"] is False
    again = LatencyCache.for_device(spec, tmp_path)  # a new run reads the file back
    assert again.path == cache.path and again.get(a.key, spec)["seconds"] == first["seconds"]
    hit = again.measure(a, spec, measure=_fake_measure(calls))
    assert calls == [a.key] and hit["cached"] is True and hit["seconds"] == first["seconds"]
    again.measure(b, spec, measure=_fake_measure(calls))
    again.measure(a, LatencySpec(size=(64, 64), batch=2), measure=_fake_measure(calls))  # another target
    assert calls == [a.key, b.key, a.key]
    data = json.loads(cache.path.read_text())
    assert data["device"]["threads"] == torch.get_num_threads() and len(data["entries"]) == 3
    # a timing cut short by a cap is re-measured only when a later cap is looser than it
    capped = {"seconds": 0.5, "times": [0.5], "capped": True}
    again.put(b.key, spec, capped)
    assert again.measure(b, spec, cap_s=0.1, measure=_fake_measure(calls))["cached"] is True
    again.measure(b, spec, cap_s=1.0, measure=_fake_measure(calls))
    assert calls[-1] == b.key and len(calls) == 4


def test_device_key_depends_on_threads(tmp_path):
    spec = LatencySpec()
    threads = torch.get_num_threads()
    path = LatencyCache.for_device(spec, tmp_path).path
    try:
        torch.set_num_threads(threads + 1)
        other = LatencyCache.for_device(spec, tmp_path).path
    finally:
        torch.set_num_threads(threads)
    assert path != other
    assert LatencyCache.for_device(LatencySpec(precision="int8"), tmp_path).path != path


# ---- the search, with fake measuring and training ---------------------------------------------------
def _h(key: str, lo: int, hi: int) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[lo:hi], 16) / 16 ** (hi - lo)


class Fakes:
    """Deterministic stand-ins: FLOPs and Dice from a hash of the candidate, latency linear in
    FLOPs (mobile-unet 3x slower than predicted, so some pass the prediction and fail the
    measurement), 10 s of (fake) clock per proxy training."""

    def __init__(self, interrupt_after: int | None = None):
        self.measured: list[str] = []
        self.trained: list[str] = []
        self.clock = FakeClock()
        self.interrupt_after = interrupt_after

    def features(self, c):
        g = 0.2 + 10 * _h(c.key, 0, 6)
        return {"const": 1.0, "op_sum_s": 0.01 * g, "conv_s": 0.01 * g, "other_s": 0.0, "ops": 0.0, "gflop": g,
                "params": 1000.0}

    def measure(self, c, cap):
        self.measured.append(c.key)
        s = 0.001 + 0.01 * self.features(c)["gflop"]
        return {"seconds": s * (3 if c.arch == "mobile-unet" else 1), "capped": False}

    def train(self, c):
        if self.interrupt_after is not None and len(self.trained) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.trained.append(c.key)
        self.clock.t += 10.0
        return {"dice": 0.5 + 0.5 * _h(c.key, 6, 12), "seconds": 10.0, "run_dir": None}

    def evaluators(self):
        return Evaluators(self.features, self.measure, self.train, clock=self.clock,
                          confirm=lambda c: {"seconds": self.measure(c, None)["seconds"]})


@pytest.fixture
def fake_plan(monkeypatch):
    """The planner's plan, without reading data (the search tests use fake training)."""
    from types import SimpleNamespace

    from unetkit.search import proxy
    from unetkit.training.config import TrainConfig

    calls = []

    def data_plan(source, out_dir, device, train_budget):
        calls.append(source)
        cfg = TrainConfig()
        cfg.model.kwargs = {"features": [8, 16], "deep_supervision": True}
        cfg.max_minutes = 10.0
        return SimpleNamespace(config=cfg)

    monkeypatch.setattr(proxy, "data_plan", data_plan)
    return calls


def _search(tmp_path, fakes, budget="200s", resume=False, latency="50ms", name="s"):
    return search("synthetic-cells", latency, budget=budget, out_dir=tmp_path / name, resume=resume,
                  evaluators=fakes.evaluators(), log=lambda s: None, grid=8, population=4)


def test_search_keeps_to_the_latency_budget(tmp_path, fake_plan):
    fakes = Fakes()
    result = _search(tmp_path, fakes)
    by_status = {}
    for r in result.records:
        by_status.setdefault(r["status"], []).append(r)
    assert by_status.get("trained") and by_status.get("predicted_over") and by_status.get("measured_over")
    assert all(r["measured_s"] <= 0.05 for r in by_status["trained"])
    assert all(r["measured_s"] > 0.05 for r in by_status["measured_over"])
    assert all(r["predicted_s"] > 0.05 and r["measured_s"] is None for r in by_status["predicted_over"])
    assert not {r["key"] for r in by_status["predicted_over"]} & set(fakes.measured)  # never timed
    assert set(fakes.trained) == {r["key"] for r in by_status["trained"]}
    best = max(by_status["trained"], key=lambda r: r["dice"])
    assert result.chosen_record["key"] == best["key"]
    assert result.chosen == {"name": best["arch"], "kwargs": best["kwargs"], "spatial_dims": 2, "in_channels": 1,
                             "num_classes": 1}
    # the front: no trained candidate is both faster and better than a front member
    for f in result.front:
        assert not any(r["measured_s"] < f["measured_s"] and r["dice"] > f["dice"] for r in by_status["trained"])
    assert result.front == pareto_front(by_status["trained"])
    # the outputs: figure, summary, a config `unetkit train` reads, an ordinary registry model
    from unetkit.training.config import TrainConfig

    out = tmp_path / "s"
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    cfg = TrainConfig.from_yaml(out / "chosen_config.yaml")  # the plan, with the chosen model
    assert cfg.model.name == best["arch"] and cfg.model.kwargs == best["kwargs"] and cfg.max_minutes == 10.0
    chosen = json.loads((out / "chosen_model.json").read_text())
    create_model(chosen["name"], spatial_dims=2, in_channels=1, num_classes=1, **chosen["kwargs"])
    summary = json.loads((out / "search.json").read_text())
    held = summary["predictor_error"]["held_out"]
    assert held["n"] >= 2 and held["method"] == "leave-one-out" and held["max"] >= held["median"] >= 0


def test_resume_skips_finished_candidates_and_matches_an_uninterrupted_search(tmp_path, fake_plan):
    whole = Fakes()
    full = _search(tmp_path, whole, budget="200s", name="whole")
    first = Fakes()
    _search(tmp_path, first, budget="100s", name="split")
    assert 0 < len(first.trained) < len(whole.trained)
    second = Fakes()
    resumed = _search(tmp_path, second, budget="200s", name="split", resume=True)
    assert not set(second.trained) & set(first.trained)  # nothing trained twice
    assert not set(second.measured) - {resumed.chosen_record["key"]} & set(first.measured)  # nor timed twice
    assert first.trained + second.trained == whole.trained
    assert [r["key"] for r in resumed.records] == [r["key"] for r in full.records]
    assert resumed.chosen == full.chosen


def test_resume_after_an_interruption(tmp_path, fake_plan):
    whole = Fakes()
    full = _search(tmp_path, whole, name="whole")
    broken = Fakes(interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, broken, name="cut")
    state = json.loads((tmp_path / "cut" / STATE_FILE).read_text())
    assert sum(r["status"] == "trained" for r in state["records"]) == 3
    again = Fakes()
    resumed = _search(tmp_path, again, name="cut", resume=True)
    assert broken.trained + again.trained == whole.trained
    assert resumed.chosen == full.chosen


def test_search_refuses_to_overwrite_or_to_resume_other_settings(tmp_path, fake_plan):
    _search(tmp_path, Fakes(), budget="30s")
    with pytest.raises(ConfigError, match="already holds a search"):
        _search(tmp_path, Fakes(), budget="30s")
    with pytest.raises(ConfigError, match="other settings.*latency"):
        _search(tmp_path, Fakes(), budget="30s", resume=True, latency="40ms")
    with pytest.raises(ConfigError, match="nothing to resume"):
        _search(tmp_path, Fakes(), resume=True, name="none")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not empty"):
        _search(tmp_path, Fakes(), name="mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_relative_latency_budget_is_a_fraction_of_the_demo_unet(tmp_path, fake_plan):
    from unetkit.search.api import DEMO_GENES
    from unetkit.training.demo import demo_config

    demo = demo_config().model
    assert to_candidate(DEMO_GENES).kwargs["features"] == demo.kwargs["features"]  # the demo's model
    fakes = Fakes()
    result = _search(tmp_path, fakes, budget="60s", latency="50%")
    want = 0.5 * fakes.measure(to_candidate(DEMO_GENES), None)["seconds"]
    assert result.budget_s == pytest.approx(want)
    assert all(r["measured_s"] <= want for r in result.records if r["status"] == "trained")


def test_option_parsing():
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_latency("50ms") == (0.05, None) and parse_latency("0.2s") == (0.2, None)
    assert parse_latency("25%") == (None, 0.25)
    assert parse_size("512x384") == (512, 384) and parse_size("256") == (256, 256)
    for bad in ("fast", "-3ms", "0ms"):
        with pytest.raises(ConfigError, match="--latency"):
            parse_latency(bad)
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration("soon")


def test_cli_reports_bad_options(tmp_path):
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    res = CliRunner().invoke(app, ["search", str(tmp_path / "missing"), "--latency", "50ms"])
    assert res.exit_code == 1 and "neither a data folder nor a sample dataset" in res.output
    res = CliRunner().invoke(app, ["search", "dsb2018-nuclei", "--latency", "50ms", "--precision", "amp",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "precision 'amp' is not measured on cpu" in res.output
    assert not (tmp_path / "o").exists()
    assert set(FAMILIES) >= {"unet", "unet++", "attention-unet", "mobile-unet", "resnet-unet"}


@pytest.mark.slow
def test_search_end_to_end_on_a_small_folder(tmp_path):
    """Real planning, timing and proxy training (through unetkit.training.train) on 6 tiny images."""
    from unetkit.data.io import write_image, write_mask

    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(8, 40, size=2)
        mask[max(0, y - 6):y + 6, max(0, x - 6):x + 6] = 1
        image = (mask * 150 + rng.normal(40, 10, mask.shape)).clip(0, 255).astype(np.uint8)
        write_image(tmp_path / "data" / "images" / f"c{i}.png", image)
        write_mask(tmp_path / "data" / "masks" / f"c{i}.png", mask)
    out = tmp_path / "search"
    kw = dict(input_size="64x64", budget="20m", out_dir=out, families=["unet"], grid=3, population=1, max_trained=1,
              proxy_steps=2, proxy_batch=2, patch_size=32, repeats=1, cache_dir=tmp_path / "cache", log=lambda s: None,
              train_budget="1m")
    result = search(tmp_path / "data", "5s", **kw)
    trained = [r for r in result.records if r["status"] == "trained"]
    assert len(trained) == 1 and 0.0 <= trained[0]["dice"] <= 1.0
    assert (out / "runs" / to_candidate(trained[0]["genes"]).short_id / "last.safetensors").is_file()
    assert result.chosen_record["key"] == trained[0]["key"] and result.chosen_record["confirm_s"] <= 5.0
    cache_files = list((tmp_path / "cache").glob("*.json"))
    assert len(cache_files) == 1
    entries = json.loads(cache_files[0].read_text())["entries"]
    assert len(entries) == sum(r["measured_s"] is not None for r in result.records)
    # resumed with a larger allowance: the finished candidate is neither timed nor trained again
    before = (out / "runs").stat().st_mtime_ns, json.loads(cache_files[0].read_text())
    result2 = search(tmp_path / "data", "5s", resume=True, **{**kw, "max_trained": 1})
    assert [r["key"] for r in result2.records] == [r["key"] for r in result.records]
    after = json.loads(cache_files[0].read_text())
    changed = [k for k in after["entries"] if after["entries"][k] != before[1]["entries"].get(k)]
    assert len(changed) <= 1  # only the confirming timing run of the chosen model
