"""`unetkit suggest-labels`: rank unlabelled images by model uncertainty (active learning)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from unetkit.cli.common import fail, size_list, user_errors


def register(app: typer.Typer) -> None:
    @app.command("suggest-labels")
    def suggest_labels(
        checkpoint: Path = typer.Argument(..., help="Model file (.safetensors) from `unetkit train`."),
        images: List[Path] = typer.Argument(..., help="Unlabelled image files, folders or glob patterns."),
        k: int = typer.Option(10, "--k", help="How many images to suggest."),
        out: Path = typer.Option(Path("ranking.csv"), "--out", "-o", help="Ranking CSV (every image, picks first)."),
        method: str = typer.Option("entropy", "--method", help="entropy, mc_dropout or tta_variance."),
        passes: int = typer.Option(8, "--passes", help="Stochastic passes for mc_dropout."),
        diversity: float = typer.Option(0.0, "--diversity", help="0: top-k by uncertainty; up to 1: also spread "
                                                                  "the picks out in feature space."),
        roi: Optional[str] = typer.Option(None, "--roi", callback=size_list, metavar="N[,N..]",
                                           help="Window size (default: the model file's): 256 or 256,256 (one per axis)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing ranking file."),
    ) -> None:
        """Rank unlabelled images by uncertainty and suggest the K to label next."""
        from unetkit.paradigms.active import suggest_labels as run

        with user_errors():
            try:
                roi_size = None if not roi else (roi[0] if len(roi) == 1 else tuple(roi))
                path, picks = run(checkpoint, images, k=k, out=out, method=method, passes=passes,
                                  diversity=diversity, roi_size=roi_size, device=device, overwrite=overwrite)
            except ValueError as err:  # bad method / k / diversity, a model without dropout
                fail(str(err))
        for n, row in enumerate(picks, 1):
            typer.echo(f"{n:>3}  {row['score']:.4f}  {row['image']}")
        typer.echo(f"wrote {path}")
