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

Printed: a markdown table (model, latency, within budget, held-out Dice, parameters, GFLOPs).
Timings from a shared machine are not comparable; take the final table on a quiet one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Working folder (must not hold a previous run).")
    ap.add_argument("--fraction", type=float, default=0.25, help="Budget as a fraction of the demo U-Net.")
    ap.add_argument("--search-budget", default="15m", help="Wall time of the search.")
    ap.add_argument("--train-minutes", type=float, default=3.0, help="Training time of every compared model.")
    ap.add_argument("--input", default="512x512")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the deployment (0: torch's).")
    ap.add_argument("--repeats", type=int, default=10, help="Timed runs of the separate timing run.")
    ap.add_argument("--proxy-steps", type=int, default=120)
    ap.add_argument("--resume", action="store_true", help="Continue the search in OUT/search.")
    args = ap.parse_args()

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
    cache = LatencyCache.for_device(spec)
    demo_s = cache.measure(to_candidate(DEMO_GENES), spec)["seconds"]
    budget_s = args.fraction * demo_s
    print(f"demo U-Net: {demo_s * 1000:.1f} ms at {size[0]}x{size[1]}; budget {budget_s * 1000:.1f} ms", flush=True)

    result = unetkit.search(data, latency=f"{budget_s * 1000:.3f}ms", input_size=size, budget=args.search_budget,
                            out_dir=args.out / "search", resume=args.resume, proxy_steps=args.proxy_steps,
                            threads=args.threads, repeats=5)
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
    (args.out / "bench_search.json").write_text(json.dumps({"budget_s": budget_s, "demo_s": demo_s, "rows": rows},
                                                           indent=1))


if __name__ == "__main__":
    main()
