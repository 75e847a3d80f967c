"""`unetkit evaluate`: a model file (or predicted masks) and a labelled folder -> metrics CSV/JSON/plot."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from unetkit.cli.common import non_negative, positive, probability, size_list, user_errors


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        source: Path = typer.Argument(..., help="Model file, or a folder of predicted masks (e.g. a predict --out folder)."),
        data_dir: Path = typer.Argument(..., help="Labelled folder (images/ + masks/, or any layout data check knows)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for per_image.csv, per_class.csv, summary.json, dice.png."),
        masks: Optional[Path] = typer.Option(None, "--masks", help="Masks folder (images in DATA_DIR)."),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes incl. background (predictions folder)."),
        ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="Mask value excluded from metrics."),
        objects: bool = typer.Option(False, "--objects", help="Also score objects (F1 at IoU >= --iou) against "
                                                               "instances/ labels where present."),
        split: bool = typer.Option(False, "--split", help="Split touching predicted objects (watershed)."),
        min_distance: int = typer.Option(5, "--min-distance", callback=positive,
                                         help="Watershed markers at least this far apart (--split)."),
        min_size: int = typer.Option(0, "--min-size", callback=non_negative,
                                     help="Ignore predicted objects smaller than this (pixels)."),
        iou: float = typer.Option(0.5, "--iou", callback=probability, help="IoU threshold for object matching."),
        no_hd95: bool = typer.Option(False, "--no-hd95", help="Skip the 95% Hausdorff distance."),
        roi: Optional[str] = typer.Option(None, "--roi", callback=size_list, metavar="N[,N..]",
                                           help="Window size when predicting: 256 or 256,256 (one per axis)."),
        tta: bool = typer.Option(False, "--tta", help="Test-time augmentation when predicting."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    ) -> None:
        """Per-image and per-class metrics of a model (or of predicted masks) on a labelled folder."""
        from unetkit.evaluation.evaluate import evaluate_folder, format_summary

        with user_errors():
            options = {"device": device, "tta": tta}
            if roi:
                options["roi_size"] = roi[0] if len(roi) == 1 else tuple(roi)
            summary = evaluate_folder(source, data_dir, out, masks_dir=masks, num_classes=num_classes,
                                      ignore_index=ignore_index, hd95=not no_hd95, objects=objects, split=split,
                                      iou_threshold=iou, min_distance=min_distance, min_size=min_size, overwrite=overwrite,
                                      predictor_options=options, progress=True)
        typer.echo(format_summary(summary))
        if "objects" in summary:
            o = summary["objects"]
            typer.echo(f"  objects (IoU >= {o['iou_threshold']}): P {o['precision']:.3f} R {o['recall']:.3f} "
                       f"F1 {o['f1']:.3f}; {o['true_objects']} true objects from {o['ground_truth']}")
        typer.echo(f"wrote {out}")
