"""`unetkit benchmark`: inference / training throughput of a registered model, backends side by side."""
from __future__ import annotations

import json

import typer

from unetkit.cli.common import fail, positive, spatial_dims


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        model: str = typer.Argument(..., help="Registered model name (see `unetkit models`)."),
        size: int = typer.Option(256, callback=positive, help="Input size per spatial dim."),
        batch: int = typer.Option(4, callback=positive, help="Batch size."),
        dims: int = typer.Option(2, callback=spatial_dims, help="Spatial dims (2 or 3)."),
        in_channels: int = typer.Option(1, callback=positive, help="Input channels."),
        num_classes: int = typer.Option(2, callback=positive, help="Output classes."),
        repeats: int = typer.Option(5, help="Timed repeats per case (medians reported)."),
        train: bool = typer.Option(True, "--train/--no-train", help="Also time training steps."),
        backends: str = typer.Option("eager,optimized,onnx,int8",
                                     help="Comma list of eager, optimized, onnx, int8."),
        compile: bool = typer.Option(True, "--compile/--no-compile",
                                     help="Let the optimised path try torch.compile (kept only if faster)."),
        compile_train: bool = typer.Option(False, "--compile-train", help="Also time a compiled training step."),
        tiny: bool = typer.Option(False, help="Use the model's tiny test configuration."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        matmul_size: int = typer.Option(4096, callback=positive, help="Side of the fp32 matmul that sets the reference rate."),
    ) -> None:
        """Images/s, peak memory, GFLOP/s and fraction of the fp32 matmul rate, per backend, with
        ratios against the eager model, measured in one run (interleaved repeats, medians)."""
        from unetkit.export.benchmark import INFER_BACKENDS, benchmark_model, format_report
        from unetkit.models import model_info

        chosen = [b.strip() for b in backends.split(",") if b.strip()]
        bad = [b for b in chosen if b not in INFER_BACKENDS]
        if bad:
            fail(f"unknown backend(s) {bad}; choose from {list(INFER_BACKENDS)}")
        try:
            entry = model_info(model)
        except KeyError as err:
            fail(str(err.args[0]))
        if dims not in entry.info.get("dims", (2, 3)):
            fail(f"model '{model}' does not support {dims}D")
        if repeats < 1:
            fail("--repeats must be >= 1")
        log = (lambda s: typer.echo(s, err=True))
        report = benchmark_model(model, size=size, batch=batch, dims=dims, repeats=repeats, train=train,
                                 backends=chosen, compile="auto" if compile else False,
                                 compile_train=compile_train, in_channels=in_channels, num_classes=num_classes,
                                 model_kwargs=dict(entry.tiny) if tiny else None, matmul_n=matmul_size,
                                 log=log)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo(format_report(report))
