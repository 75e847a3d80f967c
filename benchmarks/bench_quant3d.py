"""3D int8 (ONNX Runtime QDQ and torch oneDNN, calibrated on real patches) and 4-bit weights
against fp32, on the pyradiomics-lesions CT pair: train a small stride U-Net on lung2, score held-out lung1.

    python benchmarks/bench_quant3d.py                       # train (~300 steps), then the table
    python benchmarks/bench_quant3d.py --steps 20 --quick    # smoke test (the Dice means nothing)
    python benchmarks/bench_quant3d.py --checkpoint m.safetensors   # skip training
    python benchmarks/bench_quant3d.py --checkpoint RUN/best.safetensors --test TESTDIR --calibrate-on TRAINDIR
        # a model trained by `unetkit train` on a folder of volumes, scored on a separate labelled folder

Rows: torch fp32 (eager), torch fp32 fast (`optimize_for_inference`: torch.compile with
freezing where its probe finds it faster and equal), ONNX Runtime fp32, ONNX Runtime int8 (QDQ, per-channel weights,
calibrated on lung2 patches), torch oneDNN int8 (`quantize_torch_int8`, same patches, saved
and reloaded as a model file), the same int8 model through `optimize_for_inference` (compiled:
norm + activation + the next conv's uint8 quantisation fused into one pass), 4-bit weight-only (group 32 and per channel; dequantised to fp32
at load, so its speed is fp32's: no runtime here executes 4-bit convolutions). Dice is
computed on the whole held-out volume after sliding-window inference (same windows for
every row); times are the sliding-window pass, interleaved rounds, medians. Timings on a
shared machine are noise: re-take them on a quiet one. The CPU and its flags are printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unetkit  # noqa: E402
from bench_peers import cpu_summary  # noqa: E402
from bench_quant_demo import compare, quantised_rows  # noqa: E402
from unetkit.data.io import read_volume  # noqa: E402
from unetkit.data.normalize import normalize_image  # noqa: E402
from unetkit.inference.sliding_window import sliding_window_inference  # noqa: E402
from unetkit.losses import create_loss  # noqa: E402

DATA = [Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pyradiomics-lesions",
        Path("/work/shared/data/pyradiomics-lesions")]
SPEC = {"mode": "ct", "min": -1000.0, "max": 400.0}
PATCH = (16, 96, 96)


def load(case: str) -> tuple[np.ndarray, np.ndarray]:
    root = next((d for d in DATA if d.exists()), None)
    if root is None:
        sys.exit("pyradiomics-lesions not found (looked in ../shared/data and /work/shared/data)")
    image = normalize_image(read_volume(root / "images" / f"{case}.nii.gz")[0].astype(np.float32), SPEC)
    mask = np.asarray(read_volume(root / "masks" / f"{case}.nii.gz")[0][0] > 0, dtype=np.int64)
    return image, mask


def sample(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, fg: bool) -> tuple[np.ndarray, np.ndarray]:
    """A PATCH-sized crop; centred on a random foreground voxel when `fg`."""
    spatial = image.shape[1:]
    if fg:
        zyx = np.argwhere(mask)[rng.integers(len(np.argwhere(mask)))]
        start = [int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                 for c, p, s in zip(zyx, PATCH, spatial)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(PATCH, spatial)]
    sl = tuple(slice(a, a + p) for a, p in zip(start, PATCH))
    return image[(slice(None), *sl)], mask[sl]


def train(steps: int, features: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    image, mask = load("lung2")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = unetkit.create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, features=features,
                                 norm="instance", act="leakyrelu", down_mode="stride")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss_fn = create_loss("dice_ce")
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        pairs = [sample(image, mask, rng, fg=(i % 3 != 2)) for i in range(2)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step == 0:
            print(f"[bench_quant3d] step {step + 1}/{steps} loss {loss.item():.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return model.eval()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def folder_table(args: argparse.Namespace) -> int:
    """The same rows on a model trained by `unetkit train` (its own preprocessing and patch), scored
    on a separate labelled folder: mean class Dice pooled over the test volumes."""
    from unetkit.data.folder import scan_folder
    from unetkit.data.io import read_input, read_labels
    from unetkit.inference.predictor import Predictor

    fp32 = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    model, spec, patch = fp32.model, fp32.preprocess, tuple(fp32.roi_size)

    def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        pairs = scan_folder(folder).pairs
        images = np.stack([normalize_image(read_input(c.images[0], 3)[0].astype(np.float32), spec) for c in pairs])
        return images, np.stack([read_labels(c.mask, 3) for c in pairs]).astype(np.int64)

    images, masks = read(args.test)
    train_images, train_masks = read(args.calibrate_on)
    rng = np.random.default_rng(1)
    calib = []
    for i in range(args.calibration):
        k = int(rng.integers(len(train_images)))
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, train_images.shape[2:])]
        calib.append(train_images[(k, slice(None), *(slice(a, a + p) for a, p in zip(start, patch)))])
    calib = np.stack(calib)
    classes = max(2, int(fp32.num_classes) if fp32.num_classes > 1 else 2)

    def score(logits: torch.Tensor) -> float:
        pred = (logits[:, 0] > 0).long().numpy() if logits.shape[1] == 1 else logits.argmax(1).numpy()
        return float(np.mean([dice(pred == k, masks == k) for k in range(1, classes)]))

    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "fp32.safetensors"
        unetkit.save_model(model, fp32_file, extra={"preprocess": spec})
        rows = quantised_rows(model, fp32_file, (1, images.shape[1], *patch),
                              [calib[i:i + 2] for i in range(0, len(calib), 2)], "unetkit-q3d-",
                              fast_batch=(2, images.shape[1], *patch))
    x = torch.from_numpy(images)
    compare(rows, lambda predictor: sliding_window_inference(x, predictor, patch, overlap=0.25, batch_size=2),
            args.repeats, score,
            f"3D int8 / 4-bit vs fp32: {args.checkpoint} on held-out {args.test} ({len(images)} x "
            f"{tuple(images.shape[2:])}), windows {patch}, mean class Dice pooled")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--checkpoint", default=None, help="a trained 3D unetkit model file (skips training)")
    ap.add_argument("--save", default=None, help="write the trained fp32 model here")
    ap.add_argument("--calibration", type=int, default=16, help="calibration patches from lung2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="crop the test volume (smoke test)")
    ap.add_argument("--test", type=Path, default=None,
                    help="with --checkpoint: score this labelled folder of volumes (all the same shape) "
                         "instead of lung1, calibrating on --calibrate-on")
    ap.add_argument("--calibrate-on", type=Path, default=None, help="with --test: the model's training folder")
    args = ap.parse_args(argv)
    print(cpu_summary())
    if args.test is not None:
        if not (args.checkpoint and args.calibrate_on):
            sys.exit("--test needs --checkpoint and --calibrate-on")
        return folder_table(args)
    if args.checkpoint:
        model = unetkit.load_model(args.checkpoint)
    else:
        model = train(args.steps, tuple(args.features))
        if args.save:
            unetkit.save_model(model, args.save, extra={"preprocess": SPEC}, overwrite=True)
    image, mask = load("lung1")
    if args.quick:
        image, mask = image[:, :16, 160:352, 160:352], mask[:16, 160:352, 160:352]
    train_image, train_mask = load("lung2")
    rng = np.random.default_rng(1)
    calib = np.stack([sample(train_image, train_mask, rng, fg=(i % 2 == 0))[0] for i in range(args.calibration)])
    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "fp32.safetensors"
        unetkit.save_model(model, fp32_file, extra={"preprocess": SPEC})
        rows = quantised_rows(model, fp32_file, (1, 1, *PATCH), [calib[i:i + 2] for i in range(0, len(calib), 2)],
                              "unetkit-q3d-", fast_batch=(2, 1, *PATCH))
    x = torch.from_numpy(image)[None]
    compare(rows, lambda predictor: sliding_window_inference(x, predictor, PATCH, overlap=0.25, batch_size=2),
            args.repeats, lambda logits: dice(logits.argmax(1)[0].numpy(), mask),
            f"3D int8 / 4-bit vs fp32: held-out lung1 {tuple(image.shape[1:])}, windows {PATCH}, "
            f"U-Net {'-'.join(map(str, model.unetkit_config['features']))} (stride)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
