"""`unetkit plan`: a training plan for a dataset folder, fitted to this device and a time budget."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from unetkit.cli.common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        data: Path = typer.Argument(..., help="Dataset folder (images/ + masks/, imagesTr/ + labelsTr/, ...)."),
        masks: Optional[Path] = typer.Option(None, "--masks", help="Masks folder (images are in DATA)."),
        mask_suffix: Optional[str] = typer.Option(None, help="Mask name suffix in a single folder, e.g. _mask."),
        device: str = typer.Option("auto", help="auto | cpu | cuda: the device the plan is timed on and fits."),
        budget: Optional[str] = typer.Option(None, help="Time for the whole run, e.g. 10m, 90s, 1h (default 10m)."),
        memory: Optional[str] = typer.Option(None, help="Memory the run may use, e.g. 8G (default: 80% of the "
                                                        "GPU, 8G on the CPU)."),
        modality: Optional[str] = typer.Option(None, help="ct | mr | microscopy | rgb | other (default: detected)."),
        dims: Optional[int] = typer.Option(None, help="Spatial dims: 3 to read TIFF files as stacks."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the plan as a TrainConfig YAML here."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
        no_probe: bool = typer.Option(False, "--no-probe", help="Price candidates by FLOPs only (no timing)."),
    ) -> None:
        """Print the plan (what and why) and optionally write it: `unetkit train -c plan.yaml` runs it."""
        from unetkit.planning import plan

        with user_errors():
            result = plan(data, masks=masks, mask_suffix=mask_suffix, device=device, budget=budget, memory=memory,
                          modality=modality, spatial_dims=dims, probe=not no_probe)
            typer.echo(result.fingerprint.format())
            typer.echo(result.table())
            if out is not None:
                result.save(out, overwrite=overwrite)
                typer.echo(f"wrote {out}; train it with: unetkit train -c {out}")
