"""`unetkit search`: the most accurate U-Net of the registry's family within a latency budget."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from unetkit.cli.common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search_cmd(
        data: str = typer.Argument(..., help="Data folder (images + masks) or a sample dataset name."),
        latency: str = typer.Option(..., "--latency", help="Latency budget per batch: 50ms, 0.05s, or 25% "
                                    "(of the demo U-Net's latency measured here)."),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda: where latency is measured and "
                                   "candidates train."),
        input_size: str = typer.Option("512x512", "--input", help="Deployment input size HxW."),
        batch: int = typer.Option(1, "--batch", help="Deployment batch size."),
        budget: str = typer.Option("30m", "--budget", help="Wall time for the whole search (30m, 90s, 1.5h)."),
        precision: Optional[str] = typer.Option(None, "--precision", help="cpu: fp32 (default) | int8 (ONNX "
                                                "Runtime); cuda: amp (default) | fp32."),
        train: bool = typer.Option(False, "--train", help="Train the chosen model fully (into OUT/final)."),
        out: Path = typer.Option(Path("search"), "--out", help="Search folder (state, figure, chosen config)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the search in --out."),
        masks: Optional[str] = typer.Option(None, "--masks", help="Mask folder, when not inside DATA."),
        mask_suffix: str = typer.Option("", "--mask-suffix", help="Masks beside the images: <stem><suffix>."),
        families: Optional[str] = typer.Option(None, "--families", help="Comma list to restrict the space: unet, "
                                               "unet++, attention-unet, mobile-unet, resnet-unet."),
        proxy_steps: int = typer.Option(120, "--proxy-steps", help="Training steps per candidate."),
        proxy_batch: int = typer.Option(8, "--proxy-batch", help="Batch size of the proxy training."),
        patch_size: int = typer.Option(128, "--patch-size", help="Training tile size."),
        train_budget: str = typer.Option("10m", "--train-budget", help="Time of the full training (--train), "
                                         "planned by the planner."),
        grid: int = typer.Option(12, "--grid", help="Candidates measured to fit the latency predictor."),
        population: int = typer.Option(6, "--population", help="Population of the evolution."),
        max_trained: Optional[int] = typer.Option(None, "--max-trained", help="Stop after this many trained "
                                                  "candidates (default: only --budget)."),
        repeats: int = typer.Option(5, "--repeats", help="Timed runs per latency measurement (median)."),
        threads: int = typer.Option(0, "--threads", help="CPU threads of the deployment (0: torch's default)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the search and the proxy training."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Latency cache folder (default "
                                                 "~/.cache/unetkit/latency)."),
    ) -> None:
        """Search depth, widths, blocks, resampling and decoder for the best validation Dice
        whose measured latency on this device meets --latency; prints and plots the Pareto front.
        The data are planned by the planner (`unetkit plan`); candidates train briefly through
        `unetkit train`'s code path."""
        from unetkit.search import search

        with user_errors():
            search(data, latency, device=device, input_size=input_size, batch=batch, budget=budget,
                   precision=precision, train=train, out_dir=out, resume=resume, masks=masks,
                   mask_suffix=mask_suffix,
                   families=[f.strip() for f in families.split(",") if f.strip()] if families else None,
                   proxy_steps=proxy_steps, proxy_batch=proxy_batch, patch_size=patch_size,
                   train_budget=train_budget, grid=grid, population=population, max_trained=max_trained,
                   repeats=repeats, threads=threads, seed=seed,
                   cache_dir=cache_dir, log=lambda s: typer.echo(s))
