"""Op-level profile of one training step (forward, loss, backward, optimiser) or one inference
pass: where the time goes, as fractions (torch.profiler, self CPU time). Relative costs are
meaningful on a loaded machine where absolute times are not.

    python benchmarks/profile_step.py --dims 2 --size 256 --batch 8 --features 16 32 64 128
    python benchmarks/profile_step.py --dims 3 --size 48 --batch 2 --features 32 64 128 256 320 \
        --norm instance --act leakyrelu --down-mode stride
    python benchmarks/profile_step.py ... --infer            # inference instead of a training step
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import unetkit
from bench_peers import cpu_summary  # noqa: E402
from unetkit.export.optimize import channels_last_input, memory_format_for


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--act", default="relu")
    ap.add_argument("--down-mode", default="maxpool")
    ap.add_argument("--channels-last", choices=("on", "off"), default="on")
    ap.add_argument("--infer", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)

    print(cpu_summary())
    kw = {"features": tuple(args.features), "norm": args.norm, "act": args.act}
    if args.model == "unet":
        kw["down_mode"] = args.down_mode
    model = unetkit.create_model(args.model, spatial_dims=args.dims, in_channels=1, num_classes=2, **kw)
    x = torch.randn(args.batch, 1, *([args.size] * args.dims))
    y = torch.randint(0, 2, (args.batch, *([args.size] * args.dims)))
    if args.channels_last == "on":
        model.to(memory_format=memory_format_for(args.dims))
        x = channels_last_input(x)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        if args.infer:
            with torch.inference_mode():
                model.eval()(x)
            return
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model.train()(x), y).backward()
        opt.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'op':<48}{'self %':>8}{'calls':>8}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.key[:47]:<48}{100 * e.self_cpu_time_total / total:>7.1f}%{e.count // args.steps:>8}")


if __name__ == "__main__":
    main()
