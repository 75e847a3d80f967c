"""`unetkit models`: every registered model with parameters (and the paper's figure) and GFLOPs."""
from __future__ import annotations

from typing import Optional

import typer

from unetkit.cli.common import positive, spatial_dims

from unetkit.models import list_models, model_flops, model_info


def models_table(pattern: str = "*", size: int = 256, dims: int | None = None, in_channels: int = 1,
                 num_classes: int = 2, tiny: bool = False) -> list[dict]:
    """One row per registered model: name, parameters, paper parameters, GFLOPs at the given input.

    `dims=None` uses each model's first supported dimensionality (2D, or 3D for 3D-only models).
    The 2015 network is measured at its paper input, 572x572.
    """
    rows = []
    for name in list_models(pattern):
        entry = model_info(name)
        supported = tuple(entry.info["dims"])
        row = {"name": name, "dims": "/".join(f"{d}D" for d in supported), "description": entry.description,
               "paper_params": entry.info.get("paper_params")}
        use_dims = dims if dims is not None else supported[0]
        if use_dims not in supported:
            rows.append({**row, "params": None, "gflops": None, "note": f"{use_dims}D not supported"})
            continue
        kwargs = {"spatial_dims": use_dims, "in_channels": in_channels, "num_classes": num_classes,
                  **(entry.tiny if tiny else {})}
        input_size = 572 if name == "unet-original" and not tiny else size
        shape = (1, in_channels, *([input_size] * use_dims))
        try:
            params, flops = model_flops(name, shape, **kwargs)
            rows.append({**row, "params": params, "gflops": flops / 1e9,
                         "note": f"input {'x'.join([str(input_size)] * use_dims)}"})
        except Exception as err:  # report, keep listing the others
            rows.append({**row, "params": None, "gflops": None, "note": f"error: {err}"})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        pattern: str = typer.Argument("*", help="Shell-style name pattern."),
        size: int = typer.Option(256, callback=positive, help="Input size per spatial dim for the GFLOPs column."),
        dims: Optional[int] = typer.Option(None, callback=spatial_dims, help="Spatial dims (2 or 3); default: each model's first."),
        in_channels: int = typer.Option(1, callback=positive, help="Input channels."),
        num_classes: int = typer.Option(2, callback=positive, help="Output classes."),
        tiny: bool = typer.Option(False, help="Use each model's tiny test configuration."),
    ) -> None:
        """List registered models with parameter counts (ours and the paper's) and forward GFLOPs."""
        rows = models_table(pattern, size, dims, in_channels, num_classes, tiny)
        if not rows:
            typer.echo(f"no model matches '{pattern}'", err=True)
            raise typer.Exit(1)
        typer.echo(f"{'model':<18}{'dims':<7}{'params':>14}{'paper':>10}{'GFLOPs':>10}  note")
        for r in rows:
            params = f"{r['params']:,}" if r["params"] is not None else "-"
            paper = f"{r['paper_params'] / 1e6:.2f}M" if r["paper_params"] else "-"
            gflops = f"{r['gflops']:.2f}" if r["gflops"] is not None else "-"
            typer.echo(f"{r['name']:<18}{r['dims']:<7}{params:>14}{paper:>10}{gflops:>10}  {r['note']}")
