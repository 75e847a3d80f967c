"""The Trainer's own training step on the CPU, end to end (data loading, forward, loss, backward,
optimiser), with and without what it does for speed: freed memory retained during the loop, the
probed layout, bf16 autocast where its probe chose it, and the opt-in torch.compile.

Each variant is one short `unetkit.training.train` run on the same synthetic folder (same seed, so
the same batches); the rounds interleave the variants, and the table gives each variant's median
images/s over the epochs after the first (warm-up, probes and compile) and its ratio to the first.

    python benchmarks/bench_trainer_step.py                      # 2D 16..128 at 256^2, batch 8, fp32
    python benchmarks/bench_trainer_step.py --amp auto --compile # + the bf16 probe, + a compiled row
    python benchmarks/bench_trainer_step.py --dims 3 --size 48 --batch 2 --features 32 64 128 256 320
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import cpu_summary  # noqa: E402

import unetkit.training.trainer as trainer_mod  # noqa: E402
from unetkit.datasets import write_dataset  # noqa: E402
from unetkit.training import TrainConfig, train  # noqa: E402


def run(args, data: Path, out: Path, name: str, retain: bool, compile: bool) -> float:
    cfg = TrainConfig()
    cfg.model.spatial_dims, cfg.model.num_classes = args.dims, 1
    cfg.model.kwargs = {"features": list(args.features), "norm": args.norm}
    cfg.data.images, cfg.data.patch_size = str(data), [args.size] * args.dims
    cfg.data.batch_size, cfg.data.samples_per_epoch = args.batch, args.batch * args.steps
    cfg.data.num_workers = 0
    cfg.epochs, cfg.no_val, cfg.early_stop_patience = args.epochs, True, None
    cfg.amp, cfg.compile, cfg.progress, cfg.tensorboard, cfg.overlays = args.amp, compile, "quiet", False, 0
    cfg.out_dir, cfg.name, cfg.overwrite = str(out), name, True
    saved = trainer_mod.retained_cpu_memory
    if not retain:
        trainer_mod.retained_cpu_memory = lambda enable=True: nullcontext(False)
    try:
        result = train(cfg)
    finally:
        trainer_mod.retained_cpu_memory = saved
    return statistics.median(row["images_per_s"] for row in result.history[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--steps", type=int, default=6, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not counted)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--amp", default="off", help="off (fp32) or auto (the Trainer's bf16 probe decides)")
    ap.add_argument("--compile", action="store_true", help="add a row with the opt-in torch.compile")
    args = ap.parse_args(argv)
    print(cpu_summary(), flush=True)
    variants = [("retained memory (default)", True, False), ("glibc defaults", False, False)]
    if args.compile:
        variants.append(("retained memory + compile", True, True))
    rates: dict[str, list[float]] = {v[0]: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset("synthetic-cells", data, dims=args.dims, size=max(args.size * 2, 64) if args.dims == 2
                      else args.size + 16, count=4, seed=1)
        for r in range(args.rounds):
            for label, retain, comp in variants:
                rates[label].append(run(args, data, Path(tmp) / "runs", f"r{r}", retain, comp))
                print(f"round {r + 1} {label}: {rates[label][-1]:.2f} img/s", flush=True)
    base = statistics.median(rates[variants[1][0]])
    print(f"\n{args.dims}D {args.size}^{args.dims}, batch {args.batch}, features {args.features}, {args.norm} norm, "
          f"amp {args.amp}; {args.rounds} interleaved rounds, median img/s of epochs 2..{args.epochs}\n")
    print("| variant | img/s | x glibc defaults |\n|---|---:|---:|")
    for label, *_ in variants:
        med = statistics.median(rates[label])
        print(f"| {label} | {med:.2f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
