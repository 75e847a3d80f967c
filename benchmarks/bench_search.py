"""Issue 16's check: the searched model against the demo U-Net and the hand-picked small models,
on the nuclei image, under a CPU latency budget of a quarter of the demo U-Net's latency at 512x512.

    python benchmarks/bench_search.py --out /tmp/bench-search [--search-budget 15m] [--train-minutes 3]

1. The 512x512 nuclei image is split by columns as in `unetkit demo`: the left 70% is written as the
   search's data folder (the planner splits it again into training and validation regions), the
   right 30% is the test region, never seen by the search nor by any training.
2. Latency budget: `--fraction` (0.25) x the demo U-Net's measured latency (batch 1, 512x512, fp32,
   BatchNorm folded, channels-last), through the per-device latency cache.
3. `unetkit.search(...)` on the left part with that budget.
4. The chosen model, the demo U-Net and `unet-lite`, `unet-realtime`, `mobile-unet` are each timed
   again in a separate run (`--repeats` timings, median, fresh, not from the cache) and trained the
   same way for the same time (the planner's recipe for `--train-minutes` on the left part).
5. Held-out Dice on the right 30% (the whole image predicted, as `unetkit demo` scores it).

Printed: a markdown table (model, latency, within budget, held-out Dice, parameters, GFLOPs), and
the latency predictor's error on held-out measured candidates (leave-one-out, from the search).
Timings from a shared machine are not comparable; take the final table on a quiet one.

The latency predictor alone (no search, no training), on random candidates of the space:

    python benchmarks/bench_search.py --latency-only --input 512x512 --candidates 24 [--precision int8]

measures `--candidates` random candidates (seeded) at the input, builds the per-operation table,
and prints each candidate's measured and held-out predicted latency (`--folds` groups, seeded:
each group predicted by a predictor fitted on the others only), with the median and max error.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="Working folder (must not hold a previous run); with --latency-only, "
                    "where latency_report.json is written (optional).")
    ap.add_argument("--fraction", type=float, default=0.25, help="Budget as a fraction of the demo U-Net.")
    ap.add_argument("--search-budget", default="15m", help="Wall time of the search.")
    ap.add_argument("--train-minutes", type=float, default=3.0, help="Training time of every compared model.")
    ap.add_argument("--input", default="512x512")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the deployment (0: torch's).")
    ap.add_argument("--repeats", type=int, default=10, help="Timed runs of the separate timing run.")
    ap.add_argument("--proxy-steps", type=int, default=120)
    ap.add_argument("--resume", action="store_true", help="Continue the search in OUT/search.")
    ap.add_argument("--latency-only", action="store_true", help="Only the latency predictor's held-out error.")
    ap.add_argument("--candidates", type=int, default=24, help="--latency-only: random candidates measured.")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="--latency-only: CPU precision.")
    ap.add_argument("--folds", type=int, default=4, help="--latency-only: held-out groups (0: leave-one-out).")
    ap.add_argument("--seed", type=int, default=0, help="--latency-only: candidates and folds.")
    ap.add_argument("--fresh", action="store_true", help="--latency-only: time whole networks again (not cached).")
    ap.add_argument("--cache-dir", type=Path, default=None, help="Latency cache folder (default ~/.cache/unetkit).")
    args = ap.parse_args()
    if args.latency_only:
        latency_only(args)
        return
    if args.out is None:
        ap.error("--out is required (except with --latency-only)")

    import unetkit
    from unetkit.data.io import write_image, write_mask
    from unetkit.datasets import load_dataset
    from unetkit.search.api import DEMO_GENES, parse_size
    from unetkit.search.latency import LatencyCache, LatencySpec, candidate_features
    from unetkit.search.proxy import DataSource, data_plan, with_model
    from unetkit.search.space import REFERENCES, to_candidate
    from unetkit.training.demo import predict_mask, score
    from unetkit.training.run import train

    sample = load_dataset("dsb2018-nuclei")[0]
    x0 = int(round(sample.image.shape[-1] * 0.7))
    data = args.out / "data"
    if not (data / "images").is_dir():
        write_image(data / "images" / "nuclei_left.tif", sample.image[:, :, :x0])
        write_mask(data / "masks" / "nuclei_left.png", (sample.mask[:, :, :x0] > 0).astype(np.uint8))

    size = parse_size(args.input)
    spec = LatencySpec("cpu", "fp32", 1, size, repeats=args.repeats, threads=args.threads)
    cache = LatencyCache.for_device(spec, args.cache_dir)
    demo_s = cache.measure(to_candidate(DEMO_GENES), spec)["seconds"]
    budget_s = args.fraction * demo_s
    print(f"demo U-Net: {demo_s * 1000:.1f} ms at {size[0]}x{size[1]}; budget {budget_s * 1000:.1f} ms", flush=True)

    result = unetkit.search(data, latency=f"{budget_s * 1000:.3f}ms", input_size=size, budget=args.search_budget,
                            out_dir=args.out / "search", resume=args.resume, proxy_steps=args.proxy_steps,
                            threads=args.threads, repeats=5, cache_dir=args.cache_dir)
    models = {"demo U-Net": DEMO_GENES, **REFERENCES}
    if result.chosen_record is not None:
        models = {f"searched: {result.chosen_record['label']}": result.chosen_record["genes"], **models}

    base = data_plan(DataSource(images=str(data.resolve())), args.out, "cpu", args.train_minutes).config
    rows = []
    for i, (name, genes) in enumerate(models.items()):
        cand = to_candidate(genes)
        timing = cache.measure(cand, spec, fresh=True)["seconds"]
        cfg = with_model(base, cand)
        cfg.out_dir, cfg.name, cfg.progress, cfg.overlays = str(args.out / "runs"), f"m{i}", "quiet", 0
        print(f"training {name} for {args.train_minutes:g} min ...", flush=True)
        run = train(cfg).run_dir
        model_file = run / "best.safetensors" if (run / "best.safetensors").is_file() else run / "last.safetensors"
        mask = predict_mask(model_file, sample.image, x0, run)
        dice = score(mask, sample.instances[:, x0:], 20)["dice"]
        feats = candidate_features(cand, spec)
        rows.append({"model": name, "arch": cand.arch, "kwargs": cand.kwargs, "latency_ms": timing * 1000,
                     "within_budget": timing <= budget_s, "heldout_dice": dice,
                     "params": sum(p.numel() for p in cand.build(1, 1).parameters()),
                     "gflop": feats["dense_gflop"] + feats["depthwise_gflop"]})
    print(f"\nbudget {budget_s * 1000:.1f} ms = {args.fraction:g} x demo U-Net {demo_s * 1000:.1f} ms "
          f"({cache.info['cpu']}, {cache.info['threads']} threads); held-out = right 30% of dsb2018-nuclei\n")
    print("| model | latency ms | within budget | held-out Dice | params | GFLOP |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['latency_ms']:.1f} | {'yes' if r['within_budget'] else 'no'} | "
              f"{r['heldout_dice']:.4f} | {r['params']:,} | {r['gflop']:.2f} |")
    err = result.predictor_error["held_out"]
    if err["median"] is not None:
        print(f"\nlatency predictor, {err['n']} measured candidates of the search each held out of the fit "
              f"(leave-one-out): median error {100 * err['median']:.1f}%, max {100 * err['max']:.1f}%")
    (args.out / "bench_search.json").write_text(json.dumps({"budget_s": budget_s, "demo_s": demo_s, "rows": rows,
                                                            "predictor_error": result.predictor_error}, indent=1))


def latency_only(args: argparse.Namespace) -> None:
    """Measure random candidates, fit the per-operation predictor, print its held-out error."""
    import random

    from unetkit.search.api import parse_size
    from unetkit.search.latency import LatencyCache, LatencySpec, predictor_report
    from unetkit.search.space import SearchSpace, to_candidate

    size = parse_size(args.input)
    spec = LatencySpec("cpu", args.precision, 1, size, repeats=args.repeats, threads=args.threads)
    cache = LatencyCache.for_device(spec, args.cache_dir)
    space, rng = SearchSpace(), random.Random(args.seed)
    cands, keys = [], set()
    for _ in range(100 * args.candidates):
        c = to_candidate(space.sample(rng))
        if c.key not in keys:
            keys.add(c.key)
            cands.append(c)
        if len(cands) == args.candidates:
            break
    print(f"{len(cands)} random candidates at {size[0]}x{size[1]}, batch 1, cpu {args.precision}, "
          f"{cache.info['threads']} threads ({cache.info['cpu']}); cache {cache.path}", flush=True)
    report = predictor_report(cands, spec, cache, folds=args.folds, seed=args.seed, fresh=args.fresh,
                              log=lambda s: print(s, flush=True))
    print(f"\nheld out: {report['folds']} {'folds' if isinstance(report['folds'], int) else ''} (seed {args.seed}); "
          f"each row predicted by a predictor fitted without it; op table in {report['op_precision']}\n")
    print("| candidate | measured ms | table sum ms | predicted ms | error % |")
    print("|---|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['label']} | {r['measured_s'] * 1000:.2f} | {r['op_sum_s'] * 1000:.2f} | "
              f"{r['predicted_s'] * 1000:.2f} | {100 * r['error']:.1f} |")
    st = report["stats"]
    print(f"\nheld-out relative error over {st['n']} candidates: median {100 * st['median']:.1f}%, "
          f"p90 {100 * st['p90']:.1f}%, max {100 * st['max']:.1f}%")
    coef = report["predictor"]["coef"]
    print("predictor (all candidates): " + " + ".join(f"{v:.4g} x {k}" for k, v in coef.items() if v))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "latency_report.json").write_text(json.dumps(
            {"input": list(size), "precision": args.precision, "device": cache.info, **report}, indent=1))


if __name__ == "__main__":
    main()
