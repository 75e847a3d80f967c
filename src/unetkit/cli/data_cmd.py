"""`unetkit check-data`, `unetkit datasets`, `unetkit write-dataset`: thin wrappers over unetkit.data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from unetkit.cli.common import fail, user_errors


def register(app: typer.Typer) -> None:
    """Add this module's verbs to `app`."""

    @app.command("check-data")
    def check_data(
        folder: Path = typer.Argument(..., help="Dataset folder (images/ + masks/, imagesTr/ + labelsTr/, "
                                                "or one folder with <stem>_mask files)."),
        masks: Optional[Path] = typer.Option(None, "--masks", help="Masks folder (images are in FOLDER)."),
        mask_suffix: Optional[str] = typer.Option(None, help="Mask name suffix in a single folder, e.g. _mask."),
        num_classes: Optional[int] = typer.Option(None, help="Classes including background (checks label values)."),
        mask_kind: str = typer.Option("auto", help="auto, binary, classes or instances."),
        dims: Optional[int] = typer.Option(None, help="Spatial dims: 2, or 3 to read TIFF files as stacks."),
        allow_empty: bool = typer.Option(False, "--allow-empty", help="Do not mention masks with background only."),
        strict: bool = typer.Option(False, "--strict", help="Treat empty masks (background only) as problems, "
                                                             "not warnings."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Check a dataset folder; print problems (one row per file) and statistics. Exit 1 on problems."""
        from unetkit.data.checks import check_dataset

        with user_errors():
            report = check_dataset(folder, masks_dir=masks, mask_suffix=mask_suffix, num_classes=num_classes,
                                   mask_kind=mask_kind, spatial_dims=dims, allow_empty=allow_empty,
                                   strict=strict)
        fingerprint = None
        if report.ok:  # the planning fingerprint (cached; `unetkit plan` reuses it)
            from unetkit.planning import dataset_fingerprint

            with user_errors():
                fingerprint = dataset_fingerprint(folder, masks, mask_suffix, spatial_dims=dims,
                                                  mask_kind=mask_kind, report=report)
        if as_json:
            payload = report.to_dict()
            if fingerprint is not None:
                payload["fingerprint"] = fingerprint.to_dict()
            typer.echo(json.dumps(payload, indent=2))
        else:
            typer.echo(f"dataset: {folder}")
            typer.echo(report.format_stats())
            if fingerprint is not None:
                typer.echo(fingerprint.format())
            if report.warnings:
                typer.echo(f"warnings (not problems; --strict makes them problems):\n"
                           f"{report.format_table(warnings=True)}", err=True)
        if not report.ok:
            if not as_json:
                typer.echo("")
            fail(report.message())
        if not as_json:
            typer.echo("no problems found")

    @app.command("datasets")
    def datasets() -> None:
        """List the sample datasets (write one with `unetkit write-dataset NAME DIR`)."""
        from unetkit.datasets import DATASETS, list_datasets

        typer.echo(f"{'name':<18}{'dims':<8}{'license':<12}description")
        for name in list_datasets():
            entry = DATASETS.entry(name)
            dims = "/".join(f"{d}D" for d in entry.info.get("dims", (2,)))
            typer.echo(f"{name:<18}{dims:<8}{entry.info.get('license', ''):<12}{entry.description}")

    @app.command("write-dataset")
    def write_dataset_cmd(
        name: str = typer.Argument(..., help="Sample dataset name (see `unetkit datasets`)."),
        out_dir: Path = typer.Argument(..., help="Output folder (images/, masks/, instances/, SOURCE.md)."),
        size: Optional[int] = typer.Option(None, help="Image side (synthetic-cells)."),
        count: Optional[int] = typer.Option(None, help="Number of images (synthetic-cells)."),
        dims: Optional[int] = typer.Option(None, help="2 or 3 (synthetic-cells)."),
        num_classes: Optional[int] = typer.Option(None, help="Classes incl. background (synthetic-cells)."),
        seed: Optional[int] = typer.Option(None, help="Random seed (synthetic-cells)."),
        objects: Optional[int] = typer.Option(None, help="Objects per image (synthetic-cells; default fills "
                                                          "~35% of the area; few objects leave classes out)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    ) -> None:
        """Write a sample dataset as a plain folder, the layout check-data and training read."""
        from unetkit.datasets import DATASETS, write_dataset

        options = {k: v for k, v in dict(size=size, count=count, dims=dims, num_classes=num_classes,
                                         seed=seed, objects=objects).items() if v is not None}
        with user_errors():
            try:
                DATASETS.entry(name)
            except KeyError as err:
                fail(str(err.args[0]))
            if name == "dsb2018-nuclei" and options:
                fail(f"dsb2018-nuclei is a fixed real image; options {sorted(options)} do not apply")
            out = write_dataset(name, out_dir, overwrite=overwrite, **options)
        typer.echo(f"wrote {name} to {out}")
