"""`unetkit.search(...)`: the best U-Net of the registry's family that meets a latency budget on
this device.

    result = unetkit.search("dsb2018-nuclei", latency="30ms", input_size=(512, 512), budget="10m",
                            out_dir="search-nuclei")
    result.chosen            # the chosen registry config {"name", "kwargs", ...}
    result.front             # the Pareto front (latency vs validation Dice)

Writes in `out_dir`: search_state.json (resumable), search.json (summary: settings, device,
predictor error, every candidate, front, chosen), pareto.png, chosen_model.json (the registry
config), chosen_config.yaml (a `unetkit train -c` config for the chosen model) and, with
`train=True`, the fully trained model in final/ (final/last.safetensors).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from unetkit.errors import ConfigError
from unetkit.io.atomic import atomic_path
from unetkit.search.engine import STATE_FILE, Evaluators, Search, SearchSettings, SearchState
from unetkit.search.latency import LatencyCache, LatencySpec, candidate_features
from unetkit.search.pareto import format_front, pareto_front, plot_front
from unetkit.search import proxy as _proxy
from unetkit.search.proxy import DataSource, ProxySettings, proxy_train, with_model
from unetkit.search.space import Candidate, SearchSpace, to_candidate

# the model of `unetkit demo` (unetkit.training.demo.demo_config): the reference of "--latency 25%"
DEMO_GENES = {"family": "unet", "depth": 4, "base": 16, "mult": 2.0, "down": "maxpool", "up": "transpose"}


# ---- option parsing (shared with the CLI) ------------------------------------------------------
def parse_duration(text: str | float | int, what: str = "--budget") -> float:
    """'30m', '90s', '1.5h', '45' (minutes) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(h|m|min|s|sec)?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{what} '{text}': expected a duration such as 30m, 90s or 1.5h")
    value, unit = float(m.group(1)), m.group(2) or "m"
    seconds = value * {"h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1}[unit]
    if seconds <= 0:
        raise ConfigError(f"{what} '{text}' must be positive")
    return seconds


def parse_latency(text: str | float) -> tuple[float | None, float | None]:
    """'50ms', '0.05s' -> (seconds, None); '25%' -> (None, 0.25), a fraction of the demo U-Net's
    latency measured with the same settings."""
    if isinstance(text, (int, float)):
        return float(text), None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--latency '{text}': expected a positive time such as 50ms or 0.05s, "
                          "or a percentage of the demo U-Net's latency such as 25%")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        return None, value / 100.0
    return (value / 1000.0 if unit == "ms" else value), None


def parse_size(text: str | Sequence[int]) -> tuple[int, int]:
    """'512x512' or '512' -> (512, 512)."""
    if not isinstance(text, str):
        size = tuple(int(v) for v in text)
        return (size[0], size[0]) if len(size) == 1 else size  # type: ignore[return-value]
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", text.lower())
    if not m:
        raise ConfigError(f"--input '{text}': expected HxW such as 512x512")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


# ---- result -------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    out_dir: Path
    budget_s: float
    chosen: dict[str, Any] | None  # {"name", "kwargs", "spatial_dims", "in_channels", "num_classes"}
    chosen_record: dict[str, Any] | None
    front: list[dict[str, Any]]
    records: list[dict[str, Any]]
    predictor_error: dict[str, Any]
    figure: Path | None
    final_model: Path | None = None

    def summary(self) -> str:
        return format_front(self.front, self.budget_s, self.chosen_record["key"] if self.chosen_record else None)


def search(
    data: str | Path,
    latency: str | float,
    device: str = "cpu",
    input_size: str | Sequence[int] = (512, 512),
    batch: int = 1,
    budget: str | float = "30m",
    precision: str | None = None,
    train: bool = False,
    out_dir: str | Path = "search",
    resume: bool = False,
    masks: str | Path | None = None,
    mask_suffix: str = "",
    families: Sequence[str] | None = None,
    proxy_steps: int = 120,
    proxy_batch: int = 8,
    patch_size: int = 128,
    train_budget: str | float = "10m",
    grid: int = 12,
    population: int = 6,
    max_trained: int | None = None,
    repeats: int = 5,
    threads: int = 0,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    evaluators: Evaluators | None = None,
) -> SearchResult:
    """Search the registry's U-Net family for the most accurate model within a latency budget.

    Args:
        data: a data folder (images + masks) or a sample dataset name (e.g. "dsb2018-nuclei").
        latency: the budget per batch: "50ms", "0.05s", or "25%" of the demo U-Net's latency here.
        device: "cpu" or "cuda" (where latency is measured and proxy training runs).
        input_size, batch: the deployment input (H, W) and batch size latency is measured at.
        budget: wall time for the whole search ("30m", "90s", "1.5h"); checked before each candidate.
        precision: cpu "fp32" (default) or "int8" (ONNX Runtime); cuda "amp" (default) or "fp32".
        train: train the chosen model fully into out_dir/final, as the planner plans a run of
            `train_budget` (the planner also gives the data settings of the proxy training).
        out_dir: the search folder; an existing search in it is continued only with `resume`.
        families: restrict the space (default: unet, unet++, attention-unet, mobile-unet, resnet-unet).
        proxy_steps, proxy_batch, patch_size: the short training every candidate gets.
        grid: candidates measured to fit the latency predictor; population: of the evolution.
        max_trained: stop after this many proxy-trained candidates (default: only the time budget).
        repeats: timed runs per latency measurement (median).
        threads: CPU threads of the deployment (0: torch's current setting); part of the device key.
        cache_dir: the per-device latency cache folder (default ~/.cache/unetkit/latency).
        evaluators: replace the measuring / training functions (tests).
    """
    # ---- validate everything before any work ------------------------------------------------
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got '{device}'")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available here")
    precision = precision or ("amp" if device == "cuda" else "fp32")
    source = DataSource.resolve(data, masks, mask_suffix)
    size = parse_size(input_size)
    try:
        LatencySpec(device, precision, int(batch), size, repeats=int(repeats), threads=int(threads))  # checks
    except ValueError as err:
        raise ConfigError(str(err)) from None
    budget_s, fraction = parse_latency(latency)
    time_budget_s = parse_duration(budget)
    for name, value, low in (("proxy_steps", proxy_steps, 1), ("proxy_batch", proxy_batch, 1),
                             ("patch_size", patch_size, 16), ("grid", grid, 2), ("population", population, 1),
                             ("repeats", repeats, 1)):
        if int(value) < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    try:
        space = SearchSpace(families)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if precision == "int8":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("--precision int8 needs onnxruntime: pip install 'unetkit[export]'") from None
    out = Path(out_dir)
    parse_duration(train_budget, "--train-budget")
    proxy = ProxySettings(int(proxy_steps), int(proxy_batch), int(patch_size), seed=int(seed))
    identity = {"data": asdict(source), "latency": str(latency), "device": device, "precision": precision,
                "batch": int(batch), "input": list(size), "repeats": int(repeats), "threads": int(threads),
                "proxy": asdict(proxy), "families": space.families, "grid": int(grid), "population": int(population),
                "seed": int(seed)}
    state = SearchState(out / STATE_FILE, identity, resume)  # refuses to overwrite a previous search
    state.save()  # from here on the folder is a search that --resume continues

    # ---- the data plan (channels, classes, normalisation, split, recipe) ----------------------
    log(f"planning the data ({source.describe()}) ...")
    planned = _proxy.data_plan(source, out, device, train_budget)
    base = planned.config
    in_channels, num_classes = base.model.in_channels, base.model.num_classes
    spec = LatencySpec(device, precision, int(batch), size, in_channels, num_classes, repeats=int(repeats),
                       threads=int(threads))
    cache = LatencyCache.for_device(spec, cache_dir)

    # ---- the evaluators -----------------------------------------------------------------------
    if evaluators is None:
        evaluators = Evaluators(features=lambda c: _features(c, spec, cache, log),
                                measure=lambda c, cap: cache.measure(c, spec, cap),
                                train=lambda c: proxy_train(c, base, proxy, out / "runs"), log=log,
                                confirm=lambda c: cache.measure(c, spec, fresh=True))
    if fraction is not None:
        demo = to_candidate(DEMO_GENES)
        ref = evaluators.measure(demo, None)
        budget_s = fraction * ref["seconds"]
        log(f"latency budget: {fraction:.0%} of the demo U-Net's {ref['seconds'] * 1000:.1f} ms = "
            f"{budget_s * 1000:.1f} ms")
    log(f"device: {cache.info.get('cpu')} ({spec.device}, {spec.precision}, {cache.info['threads']} threads), "
        f"batch {spec.batch} x {spec.size[0]}x{spec.size[1]}; latency cache {cache.path}")
    settings = SearchSettings(budget_s=budget_s, time_budget_s=time_budget_s, seed=int(seed), grid=int(grid),
                              population=int(population), max_trained=max_trained)
    engine = Search(space, settings, state, evaluators)
    outcome = engine.run()
    records = outcome["records"]
    log(f"search: {outcome['counts']['trained']} trained, {outcome['counts']['measured']} measured in this session, "
        f"{outcome['counts']['replayed']} replayed from the state; {outcome['elapsed_s'] / 60:.1f} min in all")

    # ---- choose, confirm with a separate timing run ------------------------------------------
    trained = sorted((r for r in records if r["status"] == "trained"), key=lambda r: -r["dice"])
    chosen_record = None
    for r in trained[:3]:
        confirm = evaluators.confirm(to_candidate(r["genes"])) if evaluators.confirm is not None else None
        r["confirm_s"] = confirm["seconds"] if confirm else None
        if r["confirm_s"] is None or r["confirm_s"] <= budget_s:
            chosen_record = r
            break
        log(f"  {r['label']}: {r['confirm_s'] * 1000:.1f} ms in the confirming timing run > budget; next")
    state.save()
    front = pareto_front(trained)
    chosen = None
    if chosen_record is not None:
        chosen = {"name": chosen_record["arch"], "kwargs": chosen_record["kwargs"], "spatial_dims": 2,
                  "in_channels": in_channels, "num_classes": num_classes}
    title = (f"{source.describe()}: {spec.device} {spec.precision}, batch {spec.batch} x "
             f"{spec.size[0]}x{spec.size[1]}, {cache.info.get('threads')} threads")
    figure = plot_front(trained, budget_s, out / "pareto.png", title, chosen_record["key"] if chosen_record else None) \
        if trained else None
    result = SearchResult(out, budget_s, chosen, chosen_record, front, records, outcome["predictor_error"], figure)
    _write_outputs(result, source, spec, cache, settings, proxy, outcome, base)
    log(result.summary())
    err = outcome["predictor_error"]
    for kind, label in (("held_out", "held-out (leave-one-out) measured candidates"),
                        ("before_measuring", "candidates predicted before they were measured")):
        if err[kind]["median"] is not None:
            log(f"latency predictor error on {err[kind]['n']} {label}: median {100 * err[kind]['median']:.1f}%, "
                f"p90 {100 * err[kind]['p90']:.1f}%, max {100 * err[kind]['max']:.1f}%")
    if chosen_record is None:
        log("no candidate met the latency budget; raise --latency or the --budget")
    else:
        log(f"chosen: {chosen_record['label']} ({chosen['name']} {json.dumps(chosen['kwargs'])}), "
            f"{chosen_record['measured_s'] * 1000:.1f} ms, val Dice {chosen_record['dice']:.4f}; "
            f"config in {out / 'chosen_config.yaml'}")
        if train:
            from unetkit.training.run import train as run_training

            cfg = _full_config(chosen_record, base)
            cfg.out_dir, cfg.name = str(out), "final"
            log(f"training the chosen model ({cfg.epochs} epochs of {cfg.data.samples_per_epoch} tiles, at most "
                f"{cfg.max_minutes:g} min) into {out / 'final'} ...")
            run_training(cfg)
            result.final_model = out / "final" / "best.safetensors"
            log(f"model file: {result.final_model}")
    return result


def _features(candidate: Candidate, spec: LatencySpec, cache: LatencyCache,
              log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """The predictor's features (per-operation table sum, timing operations new to the table),
    with GFLOPs and parameters for the tables."""
    from unetkit.models.summary import count_parameters
    import torch

    feats = candidate_features(candidate, spec, cache, log=log)
    with torch.device("meta"):
        params = count_parameters(candidate.build(spec.in_channels, spec.num_classes))
    feats["gflop"] = (feats["dense_gflop"] + feats["depthwise_gflop"]) / spec.batch
    feats["params"] = float(params)
    return feats


def _full_config(record: dict[str, Any], base: Any):
    """The planner's full-training config with the chosen model (plain, no deep supervision)."""
    cfg = with_model(base, to_candidate(record["genes"]))
    cfg.overwrite = False
    return cfg


def _write_outputs(result: SearchResult, source: DataSource, spec: LatencySpec, cache: LatencyCache,
                   settings: SearchSettings, proxy: ProxySettings, outcome: dict[str, Any], base: Any) -> None:
    out = result.out_dir
    summary = {
        "data": asdict(source), "target": {**asdict(spec), "size": list(spec.size)}, "device": cache.info,
        "latency_cache": str(cache.path), "latency_budget_s": result.budget_s,
        "time_budget_s": settings.time_budget_s, "elapsed_s": round(outcome["elapsed_s"], 1),
        "proxy_training": asdict(proxy), "counts": outcome["counts"],
        "predictor": outcome["predictor"].to_dict() if outcome["predictor"] else None,
        "predictor_error": result.predictor_error,
        "chosen": result.chosen, "chosen_record": result.chosen_record,
        "front": result.front, "candidates": result.records,
    }
    with atomic_path(out / "search.json", overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    if result.chosen_record is not None:
        with atomic_path(out / "chosen_model.json", overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(result.chosen, indent=1))
        cfg = _full_config(result.chosen_record, base)
        with atomic_path(out / "chosen_config.yaml", overwrite=True) as tmp:
            cfg.to_yaml(tmp)
