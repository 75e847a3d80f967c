"""One Trainer for one process or many (DDP under torchrun); resumable and observable.

    trainer = Trainer(config, train_set, val_set, extra_meta={"preprocess": spec})
    result = trainer.fit()

Datasets yield dicts {"image": (C, *S) float32, "mask": (1, *S) int64, optional "weight":
(1, *S) float32, optional "name": str}. The run directory receives config.yaml,
checkpoints/{last,best}.pt (full training state), {last,best}.safetensors (model files for
`unetkit predict`), metrics.csv, TensorBoard events, curves.png, overlays/ and report.json.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from unetkit.data.loader import make_loader
from unetkit.errors import ConfigError, DataError, Interrupted, TrainingError
from unetkit.export.optimize import (_map_outputs, channels_last_input, memory_format_for, prepare_for_training,
                                     probe_channels_last, probe_cpu_autocast, retained_cpu_memory, to_channels_last)
from unetkit.io.checkpoint import save_model
from unetkit.models import create_model
from unetkit.models.blocks import center_crop
from unetkit.training import artifacts as runlog
from unetkit.training.config import TrainConfig
from unetkit.training.distributed import DistContext
from unetkit.training.runfolder import RunFolder
from unetkit.training.schedule import LRSchedule, build_optimizer
from unetkit.training.seeding import EpochSampler, SeededDataset, derive_seed, seed_everything
from unetkit.training.state import load_training_state, rng_state, save_training_state, set_rng_state

DIVERGENCE_FACTOR = 10.0  # warn when the training loss exceeds this multiple of epoch 1's
HIGHER_IS_BETTER = {"dice", "iou", "precision", "recall", "specificity", "accuracy", "f1"}


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_value: float
    history: list[dict[str, Any]]
    stopped_early: bool
    monitor: str = "dice"
    monitor_ema: float = 0.0  # best_value is the moving average of the monitor when > 0


class Callback:
    """Hooks called by the Trainer on every rank; override what you need."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_step_end(self, trainer: "Trainer", step: int, loss: float) -> None: ...
    def on_validation_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", epoch: int, row: dict[str, Any]) -> None: ...


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        train_set: Dataset,
        val_set: Dataset | None = None,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        callbacks: Sequence[Callback] = (),
        run_dir: str | Path | None = None,
        resume: bool = False,
        extra_meta: dict[str, Any] | None = None,
        infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        run_dir_ready: bool = False,
        run_folder: RunFolder | None = None,
        deadline: float | None = None,
    ) -> None:
        """deadline: `time.monotonic()` by which the run must end (default: `config.max_minutes` after
        `fit()` starts); training stops early enough to validate and save before it."""
        self.cfg = config
        self.deadline = deadline
        if config.threads is not None:  # e.g. 1 on a CPU shared with other jobs (the planner measures it)
            if config.threads < 1:
                raise ConfigError(f"'threads' must be a positive number of CPU threads, got {config.threads}")
            torch.set_num_threads(config.threads)
        device = torch.device(config.device) if config.device != "auto" else None
        self.dist = DistContext.from_env("cuda" if (device or _auto_device()).type == "cuda" else "cpu")
        self.device = self.dist.device(config.device)
        self.callbacks = list(callbacks)
        self.extra_meta = dict(extra_meta or {})
        self.num_classes = config.model.num_classes
        self.amp = self._amp_enabled()  # None: decided by a probe once the model exists (CPU, amp auto)
        seed_everything(config.seed)

        self.model = model if model is not None else create_model(
            config.model.name, spatial_dims=config.model.spatial_dims, in_channels=config.model.in_channels,
            num_classes=config.model.num_classes, **config.model.kwargs)
        if config.sync_batchnorm and self.device.type != "cuda":
            raise ConfigError("sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); on the CPU "
                              "use a per-sample norm (model.kwargs.norm=instance or group) for multi-process runs")
        if config.sync_batchnorm and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        example = self._example_shape(train_set) if self.dist.is_main else None
        self.channels_last = self._channels_last(example)
        if self.channels_last:
            to_channels_last(self.model)
        if self.amp is None:  # a resume continues in the precision its run started in (see _restore)
            self.amp = False if resume else self._cpu_autocast(example)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile:  # same parameters; warns and stays eager where inductor cannot run
            self.net = prepare_for_training(self.net, channels_last=False, compile=True)

        self.loss_fn = loss if loss is not None else build_loss(config, self.model)
        self.train_loader = self._loader(train_set, train=True)
        if val_set is not None and not config.no_val and len(val_set) == 0:
            raise ConfigError("the validation set is empty: nothing would measure the model or choose the best "
                              "one; give validation cases, or set no_val (--no-val) to train without validation")
        self.val_loader = self._loader(val_set, train=False) if val_set is not None and not config.no_val else None
        if self.val_loader is not None:
            available = validation_metric_names(self.num_classes)
            if config.monitor not in available:
                raise ConfigError(f"monitor '{config.monitor}' is not a validation metric; available: "
                                  f"{', '.join(sorted(available))}")
        self._val_seconds = 0.0  # how long the last validation took (kept free at the end of a budget)
        self._save_seconds = 0.0  # how long the last end-of-epoch saving took (likewise)
        self._out_of_time = False
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        steps_per_epoch = math.ceil(len(self.train_loader) / config.accumulate)
        self.schedule = LRSchedule(self.optimizer, config.schedule, steps_per_epoch, config.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.device.type == "cuda")
        self.infer = infer or _whole_image_forward

        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.history: list[dict[str, Any]] = []
        self.best_value = -math.inf
        self.best_loss = math.inf  # breaks ties of the monitor (see _track_best)
        self.monitor_ema: float | None = None  # the smoothed monitor so far (monitor_ema > 0)
        self.best_epoch = 0
        self.bad_validations = 0
        self._improved = False
        if run_dir is None:
            run_dir = Path(config.out_dir) / self.dist.broadcast_object(default_run_name(config))
        self.run_dir = Path(run_dir)
        self.run_folder = run_folder
        if not run_dir_ready and run_folder is None:
            self.run_folder = prepare_run_dir(config, self.run_dir, resume, self.dist)
        self.warnings: list[str] = []
        self._stop_signal: int | None = None
        self._warn_unsynced_batchnorm()
        if resume:
            self._restore(load_training_state(self.run_dir / "checkpoints" / "last.pt"))
        self.tb = runlog.TensorBoardLog(self.run_dir / "tensorboard",
                                        enabled=config.tensorboard and self.dist.is_main)

    # ---- set-up ------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """'fp32', or the autocast dtype mixed precision runs in ('bf16' on the CPU)."""
        if not self.amp:
            return "fp32"
        dtype = torch.get_autocast_dtype(self.device.type) if hasattr(torch, "get_autocast_dtype") else None
        return str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16") \
            if dtype is not None else "mixed"

    def _amp_enabled(self) -> bool | None:
        """Mixed precision: 'on' / 'off' force it; 'auto' is on with CUDA (fp16 / bf16 autocast) and
        on the CPU decided by a probe (None here, `_cpu_autocast` once the model is built)."""
        if self.cfg.amp not in ("auto", "on", "off"):
            raise ConfigError(f"'amp' must be auto, on or off, got '{self.cfg.amp}'")
        if self.cfg.amp != "auto":
            return self.cfg.amp == "on"
        on_cuda = self.device.type == "cuda"
        return True if on_cuda else None

    def _example_shape(self, train_set: Dataset) -> tuple[int, ...] | None:
        """(batch <= 2, C, *patch) of the first training sample, for the probes; None when the
        dataset cannot be indexed. Reading it does not move the seeded streams."""
        saved = rng_state()
        try:
            image = torch.as_tensor(train_set[0]["image"])
            return (min(self.cfg.data.batch_size, 2), *image.shape)
        except Exception:
            return None
        finally:
            set_rng_state(saved)

    def _channels_last(self, example: tuple[int, ...] | None) -> bool:
        """NHWC / NDHWC or not. 'on' / 'off' force it; 'auto': on CUDA for 2D models, on the CPU
        as a probe of one training step in each layout measures on this machine (cached per
        machine and model; `export.optimize.probe_channels_last`); rank 0 decides for all."""
        mode = self.cfg.channels_last
        if mode not in ("auto", "on", "off"):
            raise ConfigError(f"'channels_last' must be auto, on or off, got '{mode}'")
        if mode != "auto":
            return mode == "on"
        if self.device.type != "cpu":
            return self.cfg.model.spatial_dims == 2
        decision = None
        if self.dist.is_main:
            decision = (probe_channels_last(self.model, example, train=True) if example is not None
                        else self.cfg.model.spatial_dims == 2)
        return bool(self.dist.broadcast_object(decision))

    def _cpu_autocast(self, example: tuple[int, ...] | None) -> bool:
        """amp 'auto' on the CPU: bf16 autocast where a probe of this model's training step measures
        it >= 1.25x faster than fp32 in the chosen layout (CPUs with AMX / AVX-512 BF16; cached per
        machine and model, `export.optimize.probe_cpu_autocast`); rank 0 decides for all."""
        decision = False
        if self.dist.is_main and example is not None:
            decision = probe_cpu_autocast(self.model, example, train=True, channels_last=self.channels_last)
        return bool(self.dist.broadcast_object(decision))

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        cfg = self.cfg
        world = self.dist.world_size
        if train and cfg.data.batch_size % world:
            raise ConfigError(f"data.batch_size ({cfg.data.batch_size}) must be divisible by the number of "
                              f"processes ({world}): it is the global batch")
        batch = cfg.data.batch_size // world if train else 1
        sampler = EpochSampler(len(dataset), shuffle=train, seed=cfg.seed, rank=self.dist.rank,
                               world_size=world, drop_last=train)
        if train and len(sampler) < batch:
            raise ConfigError(f"the training set has {len(dataset)} samples, fewer than one batch "
                              f"({cfg.data.batch_size}); lower data.batch_size")
        return make_loader(SeededDataset(dataset, derive_seed(cfg.seed, 1 if train else 2)), batch_size=batch,
                           shuffle=False, sampler=sampler, drop_last=train, seed=cfg.seed,
                           num_workers="auto" if cfg.data.num_workers < 0 else cfg.data.num_workers)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train to the end; SIGINT / SIGTERM stop after the current step (Interrupted, exit code 130),
        and a run that fails before its first checkpoint leaves nothing behind (see RunFolder)."""
        try:
            # CPU: freed activation buffers are kept for the next step instead of being unmapped and
            # faulted in again, zeroed, every step (glibc's defaults come back after the loop)
            with self._stop_on_signals(), retained_cpu_memory(self.device.type == "cpu"):
                return self._fit()
        except BaseException as err:
            removed = self.run_folder.abandon() if self.run_folder is not None else False
            if isinstance(err, Interrupted) or not removed or not isinstance(err, TrainingError):
                raise
            back = "; the run it replaced is back" if self.run_dir.exists() else ""
            raise TrainingError(f"{err}. No checkpoint had been written, so the new run folder was removed{back}") \
                from None

    def _fit(self) -> FitResult:
        cfg = self.cfg
        if self.deadline is None and cfg.max_minutes is not None:
            self.deadline = time.monotonic() + 60 * cfg.max_minutes
        stopped_early = False
        if self.val_loader is None and self.dist.is_main and cfg.progress != "quiet":
            print("no validation: the last model is kept (last.safetensors); the schedule and early stopping "
                  "do not use validation", flush=True)
        if self.device.type == "cpu" and self.amp and cfg.amp == "auto" and self.dist.is_main \
                and cfg.progress != "quiet" and self.epoch == 0:
            print("precision: bf16 mixed precision (a probe measured it >= 1.25x faster than fp32 on this CPU; "
                  "--set amp=off trains in fp32)", flush=True)
        epoch_times: list[float] = []
        try:
            while self.epoch < self.schedule.epochs:  # cfg.epochs, unless fitted to the budget
                epoch = self.epoch + 1
                epoch_started = time.monotonic()
                for cb in self.callbacks:
                    cb.on_epoch_start(self, epoch)
                row = {"epoch": epoch, **self.train_epoch(epoch)}
                if self.val_loader is not None and (epoch % cfg.val_every == 0 or epoch == self.schedule.epochs
                                                    or self._out_of_time):
                    started = time.monotonic()
                    metrics = self.validate(epoch)
                    self._val_seconds = time.monotonic() - started
                    stopped_early = self._track_best(epoch, metrics)
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                self.epoch = epoch
                self.history.append(row)
                started = time.monotonic()
                self._end_epoch(row)
                self._save_seconds = time.monotonic() - started
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, row)
                out_of_steps = cfg.max_steps is not None and self.step >= cfg.max_steps
                if stopped_early or self._out_of_time or self._time_left(0.0) <= 0 or out_of_steps:
                    break
                epoch_times.append(time.monotonic() - epoch_started)
                self._fit_schedule_to_budget(epoch, epoch_times)
        finally:
            self.tb.close()
        if self.dist.is_main:
            runlog.write_json(self.report(stopped_early), self.run_dir / "report.json")
        if self.run_folder is not None:
            self.run_folder.commit()
        return FitResult(self.run_dir, self.best_epoch, self.best_value, self.history, stopped_early,
                         self.cfg.monitor, self.cfg.monitor_ema)

    def _fit_schedule_to_budget(self, epoch: int, epoch_times: list[float]) -> None:
        """A decaying schedule (cosine, poly) that the time budget would cut short ends earlier instead,
        so that its learning rate still reaches the end within the budget: when the epochs run slower
        than planned (a busy machine, a plan's misprediction) the last epochs are dropped, not the end
        of the decay. Judged from the second epoch on (the first carries the warm-up), on the mean
        epoch time of this session, the same on every process; never lengthens the schedule."""
        if self.deadline is None or self.cfg.schedule.name not in ("cosine", "poly") or len(epoch_times) < 2:
            return
        end = self.schedule.epochs
        if epoch + 1 >= end:
            return
        per_epoch = self._agreed(sum(epoch_times[1:]) / (len(epoch_times) - 1))
        new_end = epoch + max(1, int(self._time_left(0.0) // max(per_epoch, 1e-9)))
        if new_end >= end:
            return
        self.schedule.end_at(new_end)
        if self.dist.is_main and self.cfg.progress != "quiet":
            print(f"budget: an epoch takes {per_epoch:.1f} s here, so the {self.cfg.schedule.name} schedule now ends "
                  f"at epoch {new_end} instead of {end}, within the budget", flush=True)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """The first SIGINT / SIGTERM asks to stop after the current step; a second SIGINT abandons it.
        Handlers are installed only in the main thread (signal's rule) and restored afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # asked twice: abandon the step (nothing half-written is kept)
            self._stop_signal = signum
            if self.dist.is_main:
                with contextlib.suppress(OSError):  # stderr may be a closed pipe
                    print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to abandon "
                          "it)", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _interrupted(self) -> Interrupted:
        if self.epoch >= 1:
            return Interrupted(f"stopped at epoch {self.epoch}; continue with `unetkit train --resume {self.run_dir}`")
        kept = "the run it replaces was restored" if getattr(self.run_folder, "replaced", None) else "nothing was kept"
        return Interrupted(f"stopped during epoch 1, before the first checkpoint; {kept}")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.net.train()
        self.train_loader.sampler.set_epoch(epoch)
        torch.manual_seed(derive_seed(cfg.seed, epoch, 0xD0))  # dropout etc.: a function of the epoch
        totals = torch.zeros(4, dtype=torch.float64)  # loss * n, n, non-finite flag, stop requested
        data_time = compute_time = 0.0
        images_seen = 0
        lr_at_start = self.schedule.lr  # the rate this epoch starts with (logged)
        bar = self._progress(len(self.train_loader), f"epoch {epoch}/{self.schedule.epochs}")
        self.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        batches = iter(self.train_loader)
        for i in range(len(self.train_loader)):
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception:
                if self._stop_signal is not None:  # loader workers hit by the same Ctrl-C
                    raise self._interrupted() from None
                raise
            t1 = time.perf_counter()
            data_time += t1 - t0
            last_micro = (i + 1) % cfg.accumulate == 0 or i + 1 == len(self.train_loader)
            loss = self._forward_backward(batch, sync=last_micro)
            stats = torch.tensor([loss * len(batch["image"]), len(batch["image"]),
                                  0.0 if math.isfinite(loss) else 1.0, float(self._stop_signal is not None)],
                                 dtype=torch.float64)
            self.dist.all_reduce_sum(stats)  # every rank learns of a non-finite loss or a stop request
            if stats[2] > 0:
                kept = f"; {self.run_dir} keeps checkpoints/last.pt from epoch {self.epoch}" if self.epoch >= 1 else ""
                raise TrainingError(
                    f"non-finite loss at epoch {epoch}, batch {i + 1} (optimiser step {self.step + 1}); "
                    f"samples: {', '.join(map(str, batch.get('name', []))) or 'unnamed'}. Lower optim.lr "
                    f"(now {self.cfg.optim.lr:g}) or check the data{kept}")
            if stats[3] > 0:  # the step was not taken: resume repeats this epoch from its start
                raise self._interrupted()
            totals += stats
            if self.epoch == 0 and i == 0:
                self._initial_loss = float(stats[0] / max(1.0, float(stats[1])))
            if last_micro:
                self._optimizer_step()
            images_seen += int(stats[1])
            compute_time += time.perf_counter() - t1
            if bar is not None:
                bar.set_postfix(loss=f"{stats[0] / stats[1]:.4f}", lr=f"{self.schedule.lr:.2e}",
                                img_s=f"{images_seen / max(1e-9, data_time + compute_time):.1f}")
                bar.update()
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, loss)
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
            if last_micro and self._time_left(self._val_seconds + self._save_seconds) <= 0:  # validate, save
                self._out_of_time = True
                break
            t0 = time.perf_counter()
        if bar is not None:
            bar.close()
        elapsed = data_time + compute_time
        return {"train_loss": float(totals[0] / totals[1]) if totals[1] > 0 else math.nan, "lr": lr_at_start,
                "images_per_s": images_seen / max(1e-9, elapsed),
                "data_wait_fraction": data_time / max(1e-9, elapsed), "steps": self.step}

    def _forward_backward(self, batch: dict[str, Any], sync: bool) -> float:
        images, masks = self._to_device(batch["image"]), batch["mask"].to(self.device, non_blocking=True)
        weight = batch.get("weight")
        weight = weight.to(self.device, non_blocking=True) if weight is not None else None
        self._check_labels(masks, batch)
        no_sync = self.net.no_sync if (self.dist.enabled and not sync) else contextlib.nullcontext
        with no_sync():
            with torch.autocast(self.device.type, enabled=self.amp):
                outputs = self.net(images)
            if self.amp:  # the losses sum over every voxel: in fp32, not in the autocast dtype (bf16 on the CPU)
                outputs = _map_outputs(outputs, lambda t: t.float())
            masks, weight = _crop_targets(outputs, masks, weight)
            loss = self.loss_fn(outputs, masks, weight) if weight is not None else self.loss_fn(outputs, masks)
            auxiliary = getattr(self.model, "auxiliary_loss", None)  # a model's own extra task (UNet 3+ CGM)
            extra = auxiliary(masks, getattr(self.loss_fn, "ignore_index", None)) if auxiliary else None
            loss = loss + extra.float() if extra is not None else loss
        if torch.isfinite(loss):
            self.scaler.scale(loss / self.cfg.accumulate).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.schedule.step()

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return channels_last_input(images) if self.channels_last else images

    def _check_labels(self, masks: torch.Tensor, batch: dict[str, Any]) -> None:
        """A class id the model cannot output is a data error, named with its samples."""
        limit = max(2, self.num_classes)
        valid = masks if getattr(self.loss_fn, "ignore_index", None) is None else \
            masks[masks != self.loss_fn.ignore_index]
        if valid.numel() and (int(valid.max()) >= limit or int(valid.min()) < 0):
            names = ", ".join(map(str, batch.get("name", []))) or "unnamed samples"
            raise DataError(f"{names}: mask holds class id {int(valid.max())} (min {int(valid.min())}) but the "
                            f"model has num_classes={self.num_classes} (allowed ids 0..{limit - 1})")

    # ---- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        from unetkit.metrics import MetricAccumulator, logits_to_labels

        self.net.eval()
        acc = MetricAccumulator(num_classes=max(2, self.num_classes), include_background=False)
        loss_sum, count = 0.0, 0
        overlays: list[tuple[str, Any, Any, Any]] = []
        for batch in self.val_loader:
            images, masks = self._to_device(batch["image"]), batch["mask"].to(self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.infer(self.model, images)
            logits = logits.float()
            loss = self.loss_fn(logits, masks) if not _is_deep_supervision(self.loss_fn) else \
                self.loss_fn.base(logits, masks)
            loss_sum += float(loss) * len(images)
            count += len(images)
            labels = logits_to_labels(logits)
            names = list(batch.get("name", [f"val_{count}"]))
            acc.update(labels.cpu(), masks.cpu(), names=names)
            if self.dist.is_main and len(overlays) < self.cfg.overlays:
                overlays.append((names[0], images[0].cpu(), masks[0].cpu(), labels[0].cpu()))
        if self.dist.enabled:  # every rank scores its share of the images; combine them all
            states = self.dist.gather_objects(acc.state_dict())
            acc = MetricAccumulator(num_classes=max(2, self.num_classes), include_background=False)
            for state in states:
                acc.merge(state)
        totals = self.dist.all_reduce_sum(torch.tensor([loss_sum, count], dtype=torch.float64))
        summary = acc.compute()
        metrics = {"loss": float(totals[0] / totals[1]) if totals[1] > 0 else math.nan}  # never a made-up 0.0
        metrics.update(_flatten_summary(summary))
        if self.dist.is_main and overlays:
            self._write_overlays(epoch, overlays)
        for cb in self.callbacks:
            cb.on_validation_end(self, epoch, metrics)
        return metrics

    def _track_best(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Update best value / checkpoint flag; True when early stopping should end the run."""
        name = self.cfg.monitor
        if name not in metrics:
            raise ConfigError(f"monitor '{name}' is not a validation metric; available: {', '.join(sorted(metrics))}")
        higher = name in HIGHER_IS_BETTER
        value = metrics[name]
        self.schedule.validation_result(value, higher)  # the schedule reacts to the measured value
        a = self.cfg.monitor_ema
        if a > 0 and math.isfinite(value):  # nnU-Net's rule: one lucky validation does not make "best"
            self.monitor_ema = value if self.monitor_ema is None else a * self.monitor_ema + (1 - a) * value
            value = self.monitor_ema
            metrics[f"{name}_ema"] = value
        score = value if higher else -value
        # A tie in the monitor goes to the lower validation loss: a held-out slab with little
        # foreground can score Dice 0 at every epoch while the model improves, and "best" was then
        # the first validated epoch.
        loss = float(metrics.get("loss", math.nan)) if name != "loss" else math.nan
        tie_won = score == self.best_value and math.isfinite(loss) and loss < self.best_loss
        self._improved = math.isfinite(score) and (score > self.best_value or tie_won)
        if self._improved:
            self.best_value, self.best_epoch, self.bad_validations = score, epoch, 0
            self.best_loss = loss if math.isfinite(loss) else math.inf
        else:
            self.bad_validations += 1
        patience = self.cfg.early_stop_patience
        return patience is not None and self.bad_validations >= patience

    # ---- persistence -------------------------------------------------------------------------
    def _end_epoch(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            state = self.training_state()
            ckpt = self.run_dir / "checkpoints"
            save_training_state(ckpt / "last.pt", state)
            save_model(self.model, self.run_dir / "last.safetensors", extra=self.model_meta(), overwrite=True)
            if getattr(self, "_improved", False):  # only a measured improvement makes a best model
                save_training_state(ckpt / "best.pt", state)
                save_model(self.model, self.run_dir / "best.safetensors", extra=self.model_meta(), overwrite=True)
            self._improved = False
            if self.run_folder is not None:
                self.run_folder.commit()  # the first checkpoint exists: a replaced run may go now
            self._check_divergence(row)
            runlog.write_history_csv(self.history, self.run_dir / "metrics.csv")
            runlog.plot_curves(self.history, self.run_dir / "curves.png", self.cfg.monitor)
            self.tb.scalars({k: v for k, v in row.items() if k != "epoch"}, row["epoch"])
            if self.cfg.progress == "json":
                print(json.dumps({k: v for k, v in row.items()}), flush=True)
            elif self.cfg.progress == "bar":
                shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                  if k in ("train_loss", "val_loss", f"val_{self.cfg.monitor}", "images_per_s",
                                           "data_wait_fraction"))
                print(f"epoch {row['epoch']}: {shown}", flush=True)
        self.dist.barrier()

    def _warn(self, message: str) -> None:
        """Print a warning once per kind (its text up to the first colon) and keep it for report.json."""
        if not any(w.split(":")[0] == message.split(":")[0] for w in self.warnings):
            self.warnings.append(message)
            if self.dist.is_main:
                print(f"warning: {message}", file=sys.stderr, flush=True)

    def _check_divergence(self, row: dict[str, Any]) -> None:
        """Warn (once) when the training loss has grown far above where it started (the first batch's
        loss of this run; after a resume, epoch 1's mean)."""
        first = getattr(self, "_initial_loss", None)
        if first is None:
            first = self.history[0].get("train_loss") if self.history else None
        loss = row.get("train_loss")
        if first is None or loss is None or not (math.isfinite(first) and math.isfinite(loss)):
            return
        if loss > DIVERGENCE_FACTOR * max(first, 1e-8) and loss > 1.0:
            self._warn(f"training is diverging: train loss {loss:.4g} in epoch {row['epoch']} against {first:.4g} "
                       f"at the start; lower optim.lr (now {self.cfg.optim.lr:g}) and train again")

    def _warn_unsynced_batchnorm(self) -> None:
        if self.dist.enabled and not self.cfg.sync_batchnorm and \
                any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            self._warn(f"BatchNorm statistics are computed per process ({self.dist.world_size} processes, "
                       f"{self.cfg.data.batch_size // self.dist.world_size} images each); "
                       + ("use sync_batchnorm=true on CUDA" if self.device.type == "cuda" else
                          "SyncBatchNorm needs CUDA, so on the CPU use model.kwargs.norm=instance or group"))

    def training_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history,
            "best_value": self.best_value, "best_epoch": self.best_epoch, "best_loss": self.best_loss,
            "monitor_ema": self.monitor_ema,
            "bad_validations": self.bad_validations, "rng": rng_state(), "config": self.cfg.to_dict(),
            "channels_last": self.channels_last, "amp": self.amp,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if bool(state.get("channels_last", self.channels_last)) != self.channels_last:  # resume in the same layout
            self.channels_last = bool(state["channels_last"])
            self.model.to(memory_format=memory_format_for(self.cfg.model.spatial_dims) if self.channels_last
                          else torch.contiguous_format)
        if self.cfg.amp == "auto" and "amp" in state:  # and in the same precision as the probe chose then
            self.amp = bool(state["amp"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        self.best_loss = float(state.get("best_loss", math.inf))
        self.monitor_ema = state.get("monitor_ema")
        self.bad_validations = int(state["bad_validations"])
        set_rng_state(state["rng"])

    def model_meta(self) -> dict[str, Any]:
        """What a predictor needs besides the weights (stored in the model files)."""
        cfg = self.cfg
        mode = "binary" if cfg.model.num_classes == 1 else "multiclass"
        return {"preprocess": cfg.data.normalize, "num_classes": cfg.model.num_classes, "mode": mode,
                "threshold": 0.5, "in_channels": cfg.model.in_channels, "spatial_dims": cfg.model.spatial_dims,
                "patch_size": list(cfg.data.patch_size), "epoch": self.epoch,
                **({"target_spacing": [float(v) for v in cfg.data.target_spacing]}  # predictors resample to it
                   if cfg.data.target_spacing is not None else {}),
                **self.extra_meta}

    def report(self, stopped_early: bool) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"run_dir": str(self.run_dir), "epochs": self.epoch, "steps": self.step,
                "best_epoch": self.best_epoch, "monitor": self.cfg.monitor, "monitor_ema": self.cfg.monitor_ema,
                "best_value": None if self.best_epoch == 0 else
                self.best_value if self.cfg.monitor in HIGHER_IS_BETTER else -self.best_value,
                "validation": self.val_loader is not None, "stopped_by_budget": self._out_of_time,
                "stopped_early": stopped_early, "schedule_epochs": self.schedule.epochs, "last": last,
                "world_size": self.dist.world_size,
                "device": str(self.device), "precision": self.precision, "warnings": list(self.warnings)}

    # ---- output helpers ----------------------------------------------------------------------
    def _time_left(self, reserve: float) -> float:
        """Seconds left before the deadline once `reserve` seconds are kept back (inf without one).
        The same answer on every process, so all stop at the same step."""
        if self.deadline is None:
            return math.inf
        return self._agreed(self.deadline - time.monotonic() - reserve)

    def _agreed(self, value: float) -> float:
        """The mean of `value` over the processes: one answer for all (the value itself in one process)."""
        if not self.dist.enabled:
            return value
        # on the training device: NCCL reduces CUDA tensors only
        total = self.dist.all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=self.device))
        return float(total) / self.dist.world_size

    def _progress(self, total: int, desc: str):
        if self.cfg.progress != "bar" or not self.dist.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def _write_overlays(self, epoch: int, items: list[tuple[str, Any, Any, Any]]) -> None:
        from unetkit.inference.overlay import overlay_figure
        from unetkit.metrics import confusion_counts, dice

        folder = self.run_dir / "overlays"
        folder.mkdir(exist_ok=True)
        for name, image, mask, pred in items:
            if image.dim() != 3:  # 2D only
                continue
            foreground = dice(confusion_counts((pred[None] > 0).long(), (mask[None] > 0).long(), 2))[0, 1]
            truth = mask[0].numpy() if mask.shape[-2:] == pred.shape[-2:] else None
            overlay_figure(image.float().numpy(), pred[0].numpy(), folder / f"epoch{epoch:03d}_{name}.png",
                           title=f"epoch {epoch}\nDice {float(foreground):.3f}", overwrite=True, truth=truth)


def default_run_name(config: TrainConfig) -> str:
    """`name`, or a timestamp and the model name (broadcast from rank 0 by the callers)."""
    return config.name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.model.name}"


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool, dist: DistContext) -> RunFolder:
    """Check or create the run folder (unetkit.training.runfolder): a previous run is replaced only
    with `config.overwrite`, only when it is a unetkit run, and only once the new run has started."""
    return RunFolder(run_dir, config, dist).open(resume)


def validation_metric_names(num_classes: int) -> set[str]:
    """The names `Trainer.validate` reports: 'loss' and the entries of the metric summary."""
    from unetkit.metrics import MetricAccumulator

    k = max(2, num_classes)
    acc = MetricAccumulator(num_classes=k, include_background=False)
    every_class = torch.arange(k).reshape(1, 1, 1, k)  # one pixel of each class, so every entry exists
    acc.update(every_class, every_class)
    return {"loss", *_flatten_summary(acc.compute())}


def build_loss(config: TrainConfig, model: nn.Module | None = None) -> nn.Module:
    """The configured loss, checked against num_classes, wrapped for deep supervision (weights:
    the config's, else the model's own `deep_supervision_weights` (U-Net++: equal), else halving)."""
    from unetkit.losses import DeepSupervisionLoss, check_loss_fits, create_loss

    loss = create_loss(config.loss.name, **config.loss.kwargs)
    check_loss_fits(loss, config.model.num_classes)
    if config.model.kwargs.get("deep_supervision"):
        weights = config.loss.deep_supervision_weights or getattr(model, "deep_supervision_weights", None)
        loss = DeepSupervisionLoss(loss, weights=weights)
    return loss


def _crop_targets(outputs: torch.Tensor | list[torch.Tensor], masks: torch.Tensor, weight: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Valid-padding models (the 2015 network) predict the centre of their input: crop the
    targets (and weight maps) to the output, as the paper's overlap-tile training does."""
    size = (outputs[0] if isinstance(outputs, (list, tuple)) else outputs).shape[2:]
    if masks.shape[2:] == size:
        return masks, weight
    return center_crop(masks, size), center_crop(weight, size) if weight is not None else None


def _is_deep_supervision(loss: nn.Module) -> bool:
    from unetkit.losses import DeepSupervisionLoss

    return isinstance(loss, DeepSupervisionLoss)


def _whole_image_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return out[0] if isinstance(out, (list, tuple)) else out


def _flatten_summary(summary: dict[str, Any]) -> dict[str, float]:
    """{'dice': {'mean': .., 'std': .., 'global': ..}} -> {'dice': mean, 'dice_std': .., 'dice_global': ..},
    plus what the means cover (the same for every metric): scored_images, scored_classes, both_empty."""
    flat: dict[str, float] = {}
    for name, value in summary.items():
        if isinstance(value, dict):
            if "mean" in value:
                flat[name] = float(value["mean"])
            for key in ("std", "global"):
                if value.get(key) is not None:
                    flat[f"{name}_{key}"] = float(value[key])
            for key, out in (("images", "scored_images"), ("classes", "scored_classes"), ("both_empty", "both_empty")):
                if key in value and out not in flat:
                    flat[out] = float(value[key])
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


def _auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


