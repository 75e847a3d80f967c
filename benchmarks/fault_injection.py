"""Fault injection through the real CLI: every bad input of issue 12, one subprocess each.

    python benchmarks/fault_injection.py [--only NAME,...] [--keep DIR] [--markdown]

Builds small inputs in a temporary folder (tiny images, a tiny model file, a short trained run),
then runs each case as `python -m unetkit.cli.main ...` (disk-full cases through a wrapper that
makes the write fail, the signal cases with a real SIGINT / SIGTERM) and prints

    case | message (last stderr line) | exit code | what was kept | ok

`ok` means: the exit code is the expected one, the message is one line that matches, no traceback
appears anywhere in the output, and the "kept" check holds (old runs, user files, earlier outputs).
Exit code of the script: 0 when every case is ok. Timings are not measured.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
WORK: list[Path] = []  # the work folder, left out of the messages in the table
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
TINY = ["--patch-size", "32,32", "--batch-size", "2", "--features", "4,8", "--progress", "quiet",
        "--augmentation", "none", "--set", "data.num_workers=0", "--set", "tensorboard=false",
        "--set", "overlays=0", "--set", "data.val_fraction=0.25"]
# a write that fails as a full disk makes it fail (torch.save's zip writer / PIL's file write)
DISK_FULL_TORCH = ("import torch, sys; from unetkit.cli.main import main\n"
                   "def full(*a, **k): raise RuntimeError('[enforce fail at inline_container.cc:672] . "
                   "PytorchStreamWriter failed writing file data/0: file write failed')\n"
                   "torch.save = full; sys.argv[0] = 'unetkit'; main()")
DISK_FULL_PIL = ("import errno, sys; from PIL import Image; from unetkit.cli.main import main\n"
                 "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
                 "Image.Image.save = full; sys.argv[0] = 'unetkit'; main()")


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    message: str  # regex the last stderr line must match
    kept: Callable[[], str] | None = None  # returns what was kept ("" when a check fails)
    wrapper: str | None = None  # python source run instead of the plain entry point
    signal: int | None = None  # send this signal once the run has its first checkpoint
    cwd: Path | None = None
    torchrun: bool = False
    result: dict = field(default_factory=dict)


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_folder(root: Path, n: int = 8, size=(32, 32), channels: int = 1, empty=(), mask_scale: int = 255,
                dtype=np.uint8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        if i not in empty:
            mask[min(4 + i, size[0] - 1):14 + i, 6:18] = 1
        image = (rng.integers(0, 60, size) + 150 * mask).astype(np.uint8)
        if channels == 3:
            image = np.stack([image, image // 2, 255 - image], axis=-1)
        write_png(root / "images" / f"img{i}.png", image)
        write_png(root / "masks" / f"img{i}.png", (mask.astype(np.int64) * mask_scale).astype(dtype))
    return root


def manifest_id(run: Path) -> str:
    try:
        return json.loads((run / "unetkit-run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return ""


def needs_of(name: str) -> set[str]:
    """The costly inputs a case needs (a trained run, an earlier prediction, the nuclei folder)."""
    return ({"run"} if "--overwrite" in name or "resume" in name else set()) | \
        ({"pred"} if "measure into" in name else set()) | ({"nuclei"} if "nuclei" in name else set())


def setup(work: Path, needs: set[str] = frozenset({"run", "pred", "nuclei"})) -> dict:
    """Inputs shared by the cases: folders, a model file, a trained run, NIfTI pairs, predictions."""
    import nibabel as nib
    import torch

    from unetkit.io.checkpoint import save_model
    from unetkit.models import create_model

    w = {"work": work}
    w["data"] = make_folder(work / "data")
    w["rgb"] = make_folder(work / "rgb", channels=3)
    w["empty"] = make_folder(work / "empty", empty=(1,))
    w["small"] = make_folder(work / "small", size=(3, 3), empty=tuple(range(8)))
    w["fiji"] = make_folder(work / "fiji", mask_scale=65535, dtype=np.uint16)
    model = create_model("unet", spatial_dims=2, in_channels=1, num_classes=1, features=[4, 8, 16])
    w["model"] = save_model(model, work / "model.safetensors")
    meta_bad = work / "unknown-arch.safetensors"
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(w["model"]), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(meta_bad), metadata={**meta, "arch": "unett"})
    w["bad_model"] = meta_bad
    torch.save({"model": model.state_dict()}, work / "best.pt")
    for shape in [(1, 1), (3, 3), (1, 300)]:
        write_png(work / "tiny" / f"{shape[0]}x{shape[1]}.png", np.full(shape, 100, np.uint8))
    w["img"] = write_png(work / "one" / "a.png", np.random.default_rng(1).integers(0, 255, (40, 40), dtype=np.uint8))
    big = (np.random.default_rng(2).random((3000, 3000)) * 255).astype(np.uint8)
    w["big"] = write_png(work / "big" / "big.png", big)
    for name, affine in [("flipped", np.diag([-1.0, 1, 1, 1])), ("spacing", np.diag([1.0, 1, 2, 1])),
                         ("shifted", np.array([[1.0, 0, 0, 100], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))]:
        root = work / f"nifti-{name}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        label = np.zeros((8, 8, 4), np.uint8)
        label[2:5, 2:5, 1:3] = 1
        nib.save(nib.Nifti1Image(np.random.default_rng(3).random((8, 8, 4)).astype(np.float32), np.eye(4)),
                 str(root / "images" / "c.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "masks" / "c.nii.gz"))
        w[f"nifti-{name}"] = root
    project = work / "runs" / "thesis"
    project.mkdir(parents=True)
    (project / "config.yaml").write_text("mine: true\n")
    (project / "thesis.tex").write_text("years of work\n")
    w["project"] = project
    w["old"], w["nuclei"] = work / "runs" / "old", work / "nuclei"
    w["old_id"] = ""
    if "run" in needs:
        _train_old(w)
    if "pred" in needs:  # an earlier prediction with --measure
        subprocess.run([sys.executable, "-m", "unetkit.cli.main", "predict", str(w["model"]), str(w["img"]), "-o",
                        str(work / "pred"), "--measure"], env=ENV, capture_output=True, text=True, timeout=600)
    if "nuclei" in needs:
        _nuclei(w)
    return w


def _train_old(w: dict) -> None:
    """A finished short run to overwrite / resume."""
    work = w["work"]
    run = subprocess.run([sys.executable, "-m", "unetkit.cli.main", "train", "--images", str(w["data"]), *TINY,
                          "--epochs", "1", "--out-dir", str(work / "runs"), "--name", "old"],
                         env=ENV, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"setup run failed:\n{run.stderr}")
    w["old_id"] = manifest_id(w["old"])


def _nuclei(w: dict) -> None:
    """write-dataset dsb2018-nuclei, and an Otsu prediction of its image."""
    work = w["work"]
    subprocess.run([sys.executable, "-m", "unetkit.cli.main", "write-dataset", "dsb2018-nuclei", str(w["nuclei"])],
                   env=ENV, capture_output=True, text=True, timeout=600)
    from unetkit.data.io import read_image, write_mask
    from unetkit.training.demo import otsu_mask

    image_file = next((w["nuclei"] / "images").iterdir())
    write_mask(work / "otsu" / f"{image_file.name.split('.')[0]}.png",
               otsu_mask(read_image(image_file)[0]).astype(np.uint8)[None])


def cases(w: dict) -> list[Case]:
    work, runs = w["work"], str(w["work"] / "runs")
    model, img = str(w["model"]), str(w["img"])

    def old_kept() -> str:
        return f"runs/old (run id {w['old_id']})" if manifest_id(w["old"]) == w["old_id"] else ""

    def absent(name: str) -> Callable[[], str]:
        return lambda: "no run folder left" if not (work / "runs" / name).exists() else ""

    def unchanged(folder: Path) -> Callable[[], str]:
        before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.is_dir() else {}
        return lambda: (f"{folder.name}/ unchanged ({len(before)} files)"
                        if {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before else "")

    def predict(*extra: str, out: str = "p") -> list[str]:
        return ["predict", model, img, "-o", str(work / out), *extra]

    def train(name: str, *extra: str, images: Path | str | None = None) -> list[str]:
        return ["train", "--images", str(images or w["data"]), *TINY, "--epochs", "1", "--out-dir", runs,
                "--name", name, *extra]

    table = [
        # ---- data loss and wrong numbers
        Case("train --overwrite, images missing", train("old", "--overwrite", images=work / "nonexist"), 1,
             r"nonexist: not a folder", old_kept),
        Case("train --overwrite, RGB images, in_channels=1", train("old", "--overwrite", images=w["rgb"]), 1,
             r"has 3 channel\(s\) \(RGB\) but the model takes in_channels=1; set --in-channels 3", old_kept),
        Case("train --overwrite, diverges in epoch 1 (NaN)",
             train("old", "--overwrite", "--optimizer", "sgd", "--lr", "1e38", "--set", "optim.momentum=0",
                   "--set", "optim.nesterov=false"), 1, r"non-finite loss.*was removed", old_kept),
        Case("train --overwrite on a folder with config.yaml (not a run)", train("thesis", "--overwrite"), 1,
             r"not a unetkit run folder \(no unetkit-run.json\)",
             lambda: "thesis.tex" if (w["project"] / "thesis.tex").is_file() else ""),
        Case("evaluate --objects on the nuclei image (instances/)",
             ["evaluate", str(work / "otsu"), str(w["nuclei"]), "-o", str(work / "ev"), "--objects", "--split",
              "--min-distance", "7", "--min-size", "20", "--no-hd95"], 0,
             r"^wrote .*ev$", lambda: _objects_line(work / "ev")),
        Case("train on masks with one background-only mask", train("empty", images=w["empty"]), 0,
             r"^run folder: .*empty", lambda: "run trained; warning printed"),
        Case("train --set data.strict=true, background-only mask",
             train("strict", "--set", "data.strict=true", images=w["empty"]), 1, r"empty mask \(background only\)",
             absent("strict")),
        # ---- tracebacks before
        Case("predict --overlap 1.5", predict("--overlap", "1.5"), 1, r"overlap \(--overlap\) must be in \[0, 1\)"),
        Case("predict --overlap -0.5", predict("--overlap", "-0.5"), 1, r"must be in \[0, 1\), got -0.5"),
        Case("predict --batch-size 0", predict("--batch-size", "0"), 1, r"must be at least 1, got 0"),
        Case("predict --roi -5", predict("--roi", "-5"), 1, r"--roi: sizes must be positive"),
        Case("predict --roi 3", predict("--roi", "3"), 1, r"smaller than the network's total stride \(4\)"),
        Case("predict --roi 256 256", predict("--roi", "256", "256"), 1, r"written --roi 256,256"),
        Case("predict --tta true", predict("--tta", "true"), 1, r"flags such as --tta take no value"),
        Case("predict --threshold 7", predict("--threshold", "7"), 1, r"is a probability in \[0, 1\], got 7"),
        Case("predict --min-size -3", predict("--min-size", "-3"), 1, r"must be >= 0, got -3"),
        Case("predict 1x1, 3x3, 1x300 images", ["predict", model, str(work / "tiny"), "-o", str(work / "pt")], 0,
             r"3 image\(s\) predicted", lambda: "3 masks" if len(list((work / "pt" / "masks").iterdir())) == 3 else ""),
        Case("train on 3x3 images (total stride 4)",
             train("small", "--features", "4,8,16", images=w["small"]), 1,
             r"size 3x3 is smaller than the model's smallest input \(4", absent("small")),
        Case("predict --device cuda without CUDA", predict("--device", "cuda"), 1, r"CUDA is not available"),
        Case("train --device cuda without CUDA", train("cuda", "--device", "cuda"), 1, r"CUDA is not available",
             absent("cuda")),
        Case("train --model unett", train("m", "--model", "unett"), 1, r"unknown model 'unett'; did you mean 'unet'",
             absent("m")),
        Case("train --loss dicee", train("l", "--loss", "dicee"), 1, r"unknown loss 'dicee'; did you mean 'dice'",
             absent("l")),
        Case("train --set model.kwargs.nosuch=1", train("k", "--set", "model.kwargs.nosuch=1"), 1,
             r"model 'unet' has no option 'nosuch'", absent("k")),
        Case("predict, model file with unknown arch", ["predict", str(w["bad_model"]), img, "-o", str(work / "p")], 1,
             r"unknown-arch.safetensors: cannot rebuild its 'unett' model"),
        Case("evaluate, model file with unknown arch",
             ["evaluate", str(w["bad_model"]), str(w["data"]), "-o", str(work / "e")], 1, r"cannot rebuild its 'unett'"),
        Case("export, model file with unknown arch",
             ["export", str(w["bad_model"]), "--format", "onnx", "--out", str(work / "x.onnx")], 1,
             r"cannot rebuild its 'unett'"),
        Case("predict checkpoints/best.pt", ["predict", str(work / "best.pt"), img, "-o", str(work / "p")], 1,
             r"is a training checkpoint .* use the run folder's best.safetensors"),
        Case("disk full while training (torch.save fails)", train("full"), 1,
             r"last.pt: could not write it: no space left on device", absent("full"), wrapper=DISK_FULL_TORCH),
        Case("disk full while predicting (PNG write fails)", predict(out="pfull"), 1,
             r"pfull/masks/a.png: could not write it: no space left on device", wrapper=DISK_FULL_PIL),
        Case("benchmark unet --size 0", ["benchmark", "unet", "--size", "0"], 1, r"--size: must be >= 1, got 0"),
        # ---- other defects
        Case("SIGINT during training", train("sigint", "--epochs", "100000"), 130,
             r"^stopped at epoch \d+; continue with `unetkit train --resume .*sigint`$",
             lambda: _checkpoint_line(work / "runs" / "sigint"), signal=signal.SIGINT),
        Case("SIGTERM during training", train("sigterm", "--epochs", "100000"), 130,
             r"^stopped at epoch \d+; continue with `unetkit train --resume .*sigterm`$",
             lambda: _checkpoint_line(work / "runs" / "sigterm"), signal=signal.SIGTERM),
        Case("resume from another working directory", ["train", "--resume", str(w["old"])], 0, r"^run folder: ",
             lambda: "resumed (data paths are absolute)", cwd=Path(tempfile.gettempdir())),
        Case("check-data: NIfTI label flipped (LAS vs RAS)", ["check-data", str(w["nifti-flipped"])], 1,
             r"orientation LAS vs the image's RAS"),
        Case("check-data: NIfTI label spacing differs", ["check-data", str(w["nifti-spacing"])], 1,
             r"spacing 1x1x2 vs the image's 1x1x1"),
        Case("check-data: NIfTI label origin +100 mm", ["check-data", str(w["nifti-shifted"])], 1,
             r"origin shifted by 100 mm"),
        Case("check-data: 16-bit 0/65535 masks", ["check-data", str(w["fiji"])], 0, r"^no problems found$",
             lambda: "read as binary, 2 classes"),
        Case("predict a 3000x3000 image with its overlay", ["predict", model, str(w["big"]), "-o", str(work / "pbig")],
             0, r"1 image\(s\) predicted", lambda: _overlay_size(work / "pbig" / "overlays" / "big.png")),
        Case("predict --measure into an existing output folder",
             ["predict", model, str(w["img"].parent), "-o", str(work / "pred"), "--measure"], 1,
             r"a.png exists \(from an earlier prediction\)", unchanged(work / "pred")),
        Case("train --epochs -1", train("e", "--epochs", "-1"), 1, r"'epochs' must be at least 1, got -1", absent("e")),
        Case("train --progress fancy", train("f", "--progress", "fancy"), 1, r"'progress' must be bar, quiet or json",
             absent("f")),
        Case("models --dims 5", ["models", "--dims", "5"], 1, r"--dims: must be in \[2, 3\], got 5"),
        Case("train lr=1e6 with Adam (diverges, finite)", train("adam", "--epochs", "3", "--lr", "1e6"), None,
             r"training is diverging|non-finite loss", lambda: "run kept, warning printed"),
        Case("torchrun 2 CPU processes, BatchNorm", train("ddp", "--epochs", "1"), 0, r"^run folder: .*ddp",
             lambda: "", torchrun=True),
    ]
    return table


def _objects_line(folder: Path) -> str:
    try:
        o = json.loads((folder / "summary.json").read_text())["objects"]
    except (OSError, KeyError, ValueError):
        return ""
    return f"F1 {o['f1']:.3f}, {o['true_objects']} true objects from {o['ground_truth'].split(' (')[0]}"


def _checkpoint_line(run: Path) -> str:
    import torch

    try:
        epoch = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    except Exception:
        return ""
    left = list(run.rglob("*.tmp"))
    return "" if left else f"checkpoint of epoch {epoch}, no partial files"


def _overlay_size(path: Path) -> str:
    from PIL import Image

    if not path.is_file():
        return ""
    with Image.open(path) as im:
        return f"overlay {im.size[0]}x{im.size[1]} px (from a <=1024 px preview)"


def run_case(case: Case) -> None:
    if case.torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "unetkit.cli.main", *case.args]
    elif case.wrapper:
        cmd = [sys.executable, "-c", case.wrapper, *case.args]
    else:
        cmd = [sys.executable, "-m", "unetkit.cli.main", *case.args]
    proc = subprocess.Popen(cmd, env=ENV, cwd=case.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if case.signal is not None:
        run = Path(case.args[case.args.index("--out-dir") + 1]) / case.args[case.args.index("--name") + 1]
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(case.signal)
    out, err = proc.communicate(timeout=600)
    text = out + err
    lines = [line for line in err.strip().splitlines() if line.strip() and not _progress_noise(line)]
    if case.code == 0 or case.code is None:
        lines = lines or out.strip().splitlines()
    stdout_last = out.strip().splitlines()[-1] if out.strip() else ""
    message = lines[-1] if lines else stdout_last
    if case.code == 0 and stdout_last:
        message = stdout_last
    if case.torchrun:
        message = stdout_last
    matched = re.search(case.message, message) or re.search(case.message, text, re.M)
    kept = case.kept() if case.kept else "-"
    if case.torchrun:
        warnings = err.count("BatchNorm statistics are computed per process")
        folders = out.count("run folder:")
        kept = f"BatchNorm warning x{warnings}, 'run folder:' x{folders}"
        ok_extra = warnings == 1 and folders == 1
    else:
        ok_extra = bool(kept)
    expected = case.code if case.code is not None else proc.returncode
    message = message.replace(str(WORK[0]) + "/", "").replace(str(WORK[0]), ".")
    case.result = {"message": message.removeprefix("error: ")[:110], "code": proc.returncode, "kept": kept or "(check failed)",
                   "ok": proc.returncode == expected and bool(matched) and "Traceback" not in text and ok_extra}


def _progress_noise(line: str) -> bool:
    return bool(re.match(r"^\s*(predict|evaluate|epoch)\b.*(it/s|s/it|image/s|/\d+ \[)", line)) or "\r" in line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="unetkit-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    WORK.append(work.resolve())
    sys.path.insert(0, str(SRC))
    try:
        wanted = [n for n in CASE_NAMES if not args.only or any(s.strip() in n for s in args.only.split(","))]
        needs = set().union(*(needs_of(n) for n in wanted)) if wanted else set()
        chosen = [c for c in cases(setup(work, needs)) if c.name in wanted]
        for case in chosen:
            run_case(case)
            r = case.result
            print(f"{'ok ' if r['ok'] else 'BAD'} {case.name}: exit {r['code']}; {r['message']}", file=sys.stderr,
                  flush=True)
        sep = " | "
        print(sep.join(["input", "message", "exit", "kept", "ok"]) if not args.markdown else
              "| input | message | exit | what was kept | ok |\n|---|---|---|---|---|")
        for case in chosen:
            r = case.result
            row = [case.name, r["message"], str(r["code"]), r["kept"], "yes" if r["ok"] else "NO"]
            print(("| " + " | ".join(c.replace("|", "/") for c in row) + " |") if args.markdown else sep.join(row))
        return 0 if all(c.result["ok"] for c in chosen) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


CASE_NAMES = [c.name for c in cases({k: Path("/nonexistent") for k in (
    "work", "model", "img", "data", "rgb", "empty", "small", "fiji", "bad_model", "big", "nifti-flipped",
    "nifti-spacing", "nifti-shifted", "project", "old", "nuclei")} | {"old_id": ""})]

if __name__ == "__main__":
    sys.exit(main())
