"""`unetkit models`: every registered model with parameters and GFLOPs."""
from __future__ import annotations

import typer

from unetkit.models import list_models, model_flops, model_info


def models_table(pattern: str = "*", size: int = 256, dims: int = 2, in_channels: int = 1,
                 num_classes: int = 2, tiny: bool = False) -> list[dict]:
    """One row per registered model: name, parameters, GFLOPs at the given input (or why not)."""
    rows = []
    for name in list_models(pattern):
        entry = model_info(name)
        row = {"name": name, "dims": "/".join(f"{d}D" for d in entry.info["dims"]),
               "description": entry.description}
        if dims not in entry.info["dims"]:
            rows.append({**row, "params": None, "gflops": None, "note": f"{dims}D not supported"})
            continue
        kwargs = {"spatial_dims": dims, "in_channels": in_channels, "num_classes": num_classes,
                  **(entry.tiny if tiny else {})}
        input_size = size
        if name == "unet-original" and dims == 2 and not tiny:
            input_size = 572
        shape = (1, in_channels, *([input_size] * dims))
        try:
            params, flops = model_flops(name, shape, **kwargs)
            rows.append({**row, "params": params, "gflops": flops / 1e9,
                         "note": f"input {'x'.join([str(input_size)] * dims)}"})
        except Exception as err:  # report, keep listing the others
            rows.append({**row, "params": None, "gflops": None, "note": f"error: {err}"})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        pattern: str = typer.Argument("*", help="Shell-style name pattern."),
        size: int = typer.Option(256, help="Input size per spatial dim for the GFLOPs column."),
        dims: int = typer.Option(2, help="Spatial dims (2 or 3)."),
        in_channels: int = typer.Option(1, help="Input channels."),
        num_classes: int = typer.Option(2, help="Output classes."),
        tiny: bool = typer.Option(False, help="Use each model's tiny test configuration."),
    ) -> None:
        """List registered models with parameter counts and forward GFLOPs."""
        rows = models_table(pattern, size, dims, in_channels, num_classes, tiny)
        if not rows:
            typer.echo(f"no model matches '{pattern}'", err=True)
            raise typer.Exit(1)
        typer.echo(f"{'model':<22}{'dims':<8}{'params':>14}{'GFLOPs':>10}  note")
        for r in rows:
            params = f"{r['params']:,}" if r["params"] is not None else "-"
            gflops = f"{r['gflops']:.2f}" if r["gflops"] is not None else "-"
            typer.echo(f"{r['name']:<22}{r['dims']:<8}{params:>14}{gflops:>10}  {r['note']}")
