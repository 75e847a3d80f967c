"""`unetkit predict`: a model file (or an ensemble) and images (files, folders, globs) -> masks, overlays,
measurements.

Under `torchrun --nproc_per_node N -m unetkit.cli.main predict ...` the input list is split across
the N processes (gloo on the CPU, NCCL on GPUs), each writes its own files' outputs, and process 0
writes the one counts.csv.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from unetkit.cli.common import fail, size_list, user_errors


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        checkpoint: Path = typer.Argument(..., help="Model file (.safetensors) written by unetkit, or a "
                                          "cross-validation run folder (the ensemble of its folds)."),
        inputs: List[str] = typer.Argument(..., help="Image files, folders or glob patterns; more .safetensors "
                                           "model files first make an ensemble (probabilities averaged)."),
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
        no_postprocess: bool = typer.Option(False, "--no-postprocess", help="Skip the post-processing stored "
                                            "in the model file (chosen by cross-validation)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        skip_errors: bool = typer.Option(False, "--skip-errors", help="Report bad files and go on."),
        resume: bool = typer.Option(False, "--resume", help="Skip images whose outputs all exist (continue "
                                    "an interrupted run); redo images with only some outputs."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
        fast: bool = typer.Option(False, "--fast", help="Optimised inference (BN folded; torch.compile where a "
                                  "probe finds it faster and equal, e.g. 3D models on CPU; ~20 s warm-up)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16: bf16 autocast on a CPU with "
                                      "AMX / AVX-512 BF16 (faster; probabilities differ from fp32 by ~1e-2)."),
    ) -> None:
        """Predict masks for images with a trained model file, several (an ensemble), or a CV run folder."""
        from unetkit.inference.predictor import Predictor
        from unetkit.training.distributed import DistContext

        with user_errors():
            overrides: dict = {} if threshold is None else {"threshold": threshold}
            if fast:
                overrides["fast"] = True
            if precision != "fp32":
                overrides["precision"] = precision
            if no_postprocess:
                overrides["postprocessing"] = []
            roi_size = (roi[0] if len(roi) == 1 else tuple(roi)) if roi else None
            models = [checkpoint, *(Path(i) for i in inputs if i.endswith(".safetensors"))]
            inputs = [i for i in inputs if not i.endswith(".safetensors")]
            if not inputs:
                fail("no images given (only model files)")
            ctx = DistContext.from_env(DistContext().device(device).type)  # under torchrun: shard the inputs
            try:
                predictor = Predictor.load(models, device=str(ctx.device(device)), roi_size=roi_size,
                                           overlap=overlap, tta=tta, batch_size=batch_size, **overrides)
                if ctx.is_main:
                    if len(predictor.models) > 1:
                        typer.echo(f"ensemble of {len(predictor.models)} models (probabilities averaged)")
                    stated = ("post-processing: off (--no-postprocess)" if no_postprocess
                              else predictor.describe_postprocessing())
                    for line in [stated, *predictor.notes]:
                        if line:
                            typer.echo(line)
                results = predictor.predict_paths(inputs, out, skip_errors=skip_errors, progress=True, resume=resume,
                                                  dist=ctx, save_probabilities=probabilities,
                                                  overlay=not no_overlay, overwrite=overwrite, measure=measure,
                                                  min_size=min_size, fill=fill, split=split)
            finally:
                ctx.close()
        if not ctx.is_main:
            return
        failed = [r for r in results if "error" in r]
        for r in results:
            if "error" in r:
                typer.echo(f"error: {r['error']}", err=True)
            elif "counts" in r:
                typer.echo(f"{r['image'].name}: {r['counts']['total']} object(s)")
        skipped = sum(1 for r in results if r.get("skipped"))
        typer.echo(f"{len(results) - len(failed) - skipped} image(s) predicted into {out}"
                   + (f" ({skipped} already done, skipped)" if skipped else "")
                   + (f" by {ctx.world_size} processes" if ctx.enabled else ""))
        if failed:
            raise typer.Exit(1)

