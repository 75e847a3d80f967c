"""`unetkit predict`: a model file and images (files, folders, globs) -> masks, overlays, measurements."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from unetkit.cli.common import size_list, user_errors


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        checkpoint: Path = typer.Argument(..., help="Model file (.safetensors) written by unetkit."),
        inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks/, overlays/, ...)."),
        roi: Optional[str] = typer.Option(None, "--roi", callback=size_list, metavar="N[,N..]",
                                           help="Window size (one value, or one per axis): 256 or 256,256 (one per axis)."),
        overlap: float = typer.Option(0.5, help="Window overlap fraction in [0, 1)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
        tta: bool = typer.Option(False, "--tta", help="Average over flips (and 90-degree turns in 2D)."),
        threshold: Optional[float] = typer.Option(None, help="Binary/multilabel threshold (default: from the file)."),
        probabilities: bool = typer.Option(False, "--probabilities", help="Also write probability maps."),
        no_overlay: bool = typer.Option(False, "--no-overlay", help="Do not write overlay PNGs."),
        measure: bool = typer.Option(False, "--measure", help="Write per-object CSVs and counts.csv."),
        split: bool = typer.Option(False, "--split", help="Separate touching objects (watershed) when measuring."),
        min_size: int = typer.Option(0, "--min-size", help="Remove objects smaller than this (pixels/voxels)."),
        fill: bool = typer.Option(False, "--fill-holes", help="Fill holes inside objects."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        skip_errors: bool = typer.Option(False, "--skip-errors", help="Report bad files and go on."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    ) -> None:
        """Predict masks for images with a trained model file."""
        from unetkit.inference.predictor import Predictor

        with user_errors():
            overrides = {} if threshold is None else {"threshold": threshold}
            roi_size = (roi[0] if len(roi) == 1 else tuple(roi)) if roi else None
            predictor = Predictor.from_checkpoint(checkpoint, device=device, roi_size=roi_size, overlap=overlap,
                                                  tta=tta, batch_size=batch_size, **overrides)
            results = predictor.predict_paths(inputs, out, skip_errors=skip_errors, progress=True,
                                              save_probabilities=probabilities, overlay=not no_overlay,
                                              overwrite=overwrite, measure=measure, min_size=min_size,
                                              fill=fill, split=split)
        failed = [r for r in results if "error" in r]
        for r in results:
            if "error" in r:
                typer.echo(f"error: {r['error']}", err=True)
            elif "counts" in r:
                typer.echo(f"{r['image'].name}: {r['counts']['total']} object(s)")
        typer.echo(f"{len(results) - len(failed)} image(s) predicted into {out}")
        if failed:
            raise typer.Exit(1)
