"""`unetkit train` and `unetkit demo`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from unetkit.cli.common import fail, user_errors


def build_config(config: Optional[Path], overrides: list[str]):
    """Defaults <- YAML file <- flag overrides (`section.field=value`)."""
    from unetkit.training.config import TrainConfig

    cfg = TrainConfig.from_yaml(config) if config is not None else TrainConfig()
    return cfg.with_overrides(overrides)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run configuration (YAML)."),
        images: Optional[str] = typer.Option(None, help="data.images: image folder."),
        masks: Optional[str] = typer.Option(None, help="data.masks: mask folder."),
        dataset: Optional[str] = typer.Option(None, help="data.dataset: a sample dataset name."),
        model: Optional[str] = typer.Option(None, help="model.name (see `unetkit models`)."),
        dims: Optional[int] = typer.Option(None, help="model.spatial_dims."),
        in_channels: Optional[int] = typer.Option(None, help="model.in_channels."),
        num_classes: Optional[int] = typer.Option(None, help="model.num_classes (1 = binary)."),
        features: Optional[str] = typer.Option(None, help="model.kwargs.features, e.g. 16,32,64,128."),
        loss: Optional[str] = typer.Option(None, help="loss.name."),
        epochs: Optional[int] = typer.Option(None, help="epochs."),
        batch_size: Optional[int] = typer.Option(None, help="data.batch_size (global)."),
        patch_size: Optional[str] = typer.Option(None, help="data.patch_size, e.g. 256,256."),
        lr: Optional[float] = typer.Option(None, help="optim.lr."),
        optimizer: Optional[str] = typer.Option(None, help="optim.name: adam | adamw | sgd."),
        schedule: Optional[str] = typer.Option(None, help="schedule.name: plateau | cosine | step | poly | none."),
        warmup: Optional[float] = typer.Option(None, help="schedule.warmup_epochs."),
        augmentation: Optional[str] = typer.Option(None, help="data.augmentation preset."),
        out_dir: Optional[str] = typer.Option(None, help="out_dir: parent of run folders."),
        name: Optional[str] = typer.Option(None, help="name: the run folder."),
        seed: Optional[int] = typer.Option(None, help="seed."),
        device: Optional[str] = typer.Option(None, help="device: auto | cpu | cuda."),
        progress: Optional[str] = typer.Option(None, help="progress: bar | quiet | json."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
        budget: Optional[str] = typer.Option(None, help="Time for the whole run, validation included, e.g. 10m, "
                                                        "90s, 1h (planned runs default to 10m)."),
        no_val: bool = typer.Option(False, "--no-val", help="Train on every case without validation (keeps the "
                                                            "last model; schedule/early stopping ignore validation)."),
        no_plan: bool = typer.Option(False, "--no-plan", help="With --images: start from the built-in defaults "
                                                              "instead of a plan for the data."),
        memory: Optional[str] = typer.Option(None, help="Planning: memory the run may use, e.g. 8G."),
        modality: Optional[str] = typer.Option(None, help="Planning: ct | mr | microscopy | rgb | other."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
        folds: Optional[int] = typer.Option(None, "--folds", help="Cross-validation: train K folds, each in "
                                            "RUN/fold_<i>/, then score and ensemble them (data.num_folds)."),
        fold: Optional[List[int]] = typer.Option(None, "--fold", help="Train only this fold of a cross-validation "
                                                 "run (repeatable; with --resume: add it to that run)."),
        set_: List[str] = typer.Option([], "--set", help="Any config field: section.field=value (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    ) -> None:
        """Train a model (one process, or many under `torchrun`).

        With --images and no --config, the run is planned for the data, this device and --budget
        (`unetkit plan`); every other flag or --set overrides one field of the plan."""
        import time

        from unetkit.planning import parse_budget
        from unetkit.training.run import train

        started = time.monotonic()

        flags = {"data.images": images, "data.masks": masks, "data.dataset": dataset, "model.name": model,
                 "model.spatial_dims": dims, "model.in_channels": in_channels, "model.num_classes": num_classes,
                 "model.kwargs.features": f"[{features}]" if features else None, "loss.name": loss,
                 "epochs": epochs, "data.batch_size": batch_size,
                 "data.patch_size": f"[{patch_size}]" if patch_size else None, "optim.lr": lr,
                 "optim.name": optimizer, "schedule.name": schedule, "schedule.warmup_epochs": warmup,
                 "data.augmentation": augmentation, "out_dir": out_dir, "name": name, "seed": seed,
                 "device": device, "progress": progress, "overwrite": "true" if overwrite else None,
                 "no_val": "true" if no_val else None, "data.num_folds": folds}
        overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(set_)
        from unetkit.training.cv import is_cv_run, train_folds

        with user_errors():
            if resume is not None:
                if overrides or config is not None or (fold and not is_cv_run(resume)):
                    fail("--resume continues a run with its own config.yaml; give no other options "
                         "(--fold N only to add a fold to a cross-validation run)")
                if is_cv_run(resume):
                    cv = train_folds(None, folds=fold or None, resume=resume)
                    typer.echo(f"cross-validation run folder: {cv.run_dir}{'' if cv.complete else ' (not complete)'}")
                    return
                result = train(None, resume=resume)  # type: ignore[arg-type]
            else:
                minutes = parse_budget(budget)
                deadline = None if minutes is None else started + 60 * minutes
                n_train = len(fold) if fold else (folds or 1)  # runs that share the budget
                if images is not None and config is None and not no_plan:
                    from unetkit.planning import plan
                    from unetkit.planning.planner import DEFAULT_BUDGET_MINUTES

                    share = (minutes or DEFAULT_BUDGET_MINUTES) / n_train  # each fold planned for its share
                    planned = plan(images, masks=masks, device=device or "auto", budget=share, memory=memory,
                                   modality=modality, spatial_dims=dims, started=started)
                    typer.echo(planned.table())
                    cfg = planned.configure(overrides)
                    deadline = started + 60 * (cfg.max_minutes or planned.budget_minutes)
                else:
                    cfg = build_config(config, overrides)
                    if minutes is not None:
                        cfg.max_minutes = minutes / n_train
                if print_config:
                    typer.echo(cfg.to_yaml())
                    return
                if folds is not None or fold:
                    cv = train_folds(cfg, folds=fold or None)
                    typer.echo(f"cross-validation run folder: {cv.run_dir}{'' if cv.complete else ' (not complete)'}")
                    return
                result = train(cfg, deadline=deadline)
        if result.best_epoch == 0:
            best = "n/a (no validation: last.safetensors is the model)"
        else:
            smoothed = f" (moving average {result.monitor_ema:g} of {result.monitor})" if result.monitor_ema else ""
            best = f"{result.best_value:.4f}{smoothed} at epoch {result.best_epoch} (best.safetensors)"
        if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun process
            typer.echo(f"run folder: {result.run_dir}  best: {best}")

    @app.command("demo")
    def demo_cmd(
        out_dir: str = typer.Option("runs", help="Parent folder of the run."),
        name: str = typer.Option("demo", help="Run folder name."),
        epochs: int = typer.Option(20, help="Training epochs (192 tiles each)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous demo run."),
        progress: str = typer.Option("bar", help="bar | quiet | json."),
    ) -> None:
        """Train a small U-Net on the embedded nuclei image; score it on a held-out region vs Otsu."""
        from unetkit.training.demo import run_demo

        with user_errors():
            run_demo(out_dir=out_dir, name=name, overwrite=overwrite, epochs=epochs, progress=progress)
