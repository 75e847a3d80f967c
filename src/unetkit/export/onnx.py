"""ONNX export and an ONNX Runtime predictor with a model's call signature.

    export_onnx(model, "unet.onnx", example_shape=(1, 1, 256, 256))
    predictor = OnnxPredictor("unet.onnx")
    logits = predictor(images)          # numpy or tensor (N, C, *S) in, float32 tensor out

The predictor can stand in for the model in sliding-window inference (batches of windows).
Batch size is always dynamic; with `dynamic_spatial=True` the spatial sizes are too (for
models built from unetkit blocks, sizes should be multiples of 2**(depth - 1), as for training).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from unetkit.io.atomic import atomic_path

DEFAULT_OPSET = 18
_AXIS_NAMES = ("depth", "height", "width")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx and onnxruntime ({err}); install them with `pip install unetkit[export]`"
        ) from None


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_shape: Sequence[int],
    dynamic_spatial: bool = True,
    opset: int = DEFAULT_OPSET,
    fold_bn: bool = True,
    check: bool = True,
    overwrite: bool = True,
    exporter: str = "auto",
) -> Path:
    """Export `model` (eval mode, optionally BN-folded; the original is not modified) to `path`.

    Input name "input" (N, C, *S), output name "logits" (deep supervision: "logits", "aux1", ...).
    `exporter`: "torchscript" (fast: ~1 s), "dynamo" (torch.export based: ~5-20 s) or "auto"
    (TorchScript first, dynamo if it fails or is missing from this torch). With `check`, runs
    ONNX Runtime on a random input and raises if it differs from torch by more than 1e-3.
    Returns the path. Writes atomically.
    """
    _require_onnx()
    import onnx

    from unetkit.export.optimize import fold_batchnorm

    net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    net = net.cpu().float().eval()
    shape = tuple(int(s) for s in example_shape)
    x = torch.randn(shape)
    with torch.no_grad():
        out = net(x)
    n_out = len(out) if isinstance(out, (list, tuple)) else 1
    out_names = ["logits"] + [f"aux{i}" for i in range(1, n_out)]
    spatial = len(shape) - 2
    axes_names = list(_AXIS_NAMES[-spatial:]) if spatial <= 3 else [f"s{i}" for i in range(spatial)]
    dyn_axes: dict[str, dict[int, str]] = {"input": {0: "batch"}}
    if dynamic_spatial:
        dyn_axes["input"].update({2 + i: n for i, n in enumerate(axes_names)})
    for name in out_names:
        dyn_axes[name] = {0: "batch"} if (not dynamic_spatial or name != "logits") else dict(dyn_axes["input"])
    path = Path(path)
    errors: list[str] = []
    with atomic_path(path, overwrite=overwrite) as tmp:
        done = False
        for kind in _exporters(exporter):
            try:
                with warnings.catch_warnings(), _quiet_exporter():
                    warnings.simplefilter("ignore")
                    if kind == "torchscript":
                        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=out_names,
                                          opset_version=min(opset, 17), dynamo=False, dynamic_axes=dyn_axes,
                                          do_constant_folding=True)
                    else:
                        dim = torch.export.Dim.DYNAMIC
                        dyn = {"x": {0: dim, **({2 + i: dim for i in range(spatial)} if dynamic_spatial else {})}}
                        program = torch.onnx.export(net, (x,), None, input_names=["input"], output_names=out_names,
                                                    opset_version=opset, dynamo=True, dynamic_shapes=dyn,
                                                    external_data=False, verbose=False)
                        onnx.save_model(program.model_proto, str(tmp))
                done = True
                break
            except Exception as err:  # try the next exporter
                errors.append(f"{kind} exporter: {type(err).__name__}: {str(err)[:300]}")
        if not done:
            raise RuntimeError("ONNX export failed:\n" + "\n".join(errors))
        if check:
            pred = OnnxPredictor(tmp)
            got = pred(x)
            want = out[0] if isinstance(out, (list, tuple)) else out
            got = got[0] if isinstance(got, list) else got
            diff = float((got - want).abs().max())
            if diff > 1e-3 * max(1.0, float(want.abs().max())):
                raise RuntimeError(f"ONNX Runtime output differs from torch by {diff:.3e}")
    return path


def _exporters(exporter: str) -> list[str]:
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got '{exporter}'")
    return ["torchscript", "dynamo"] if exporter == "auto" else [exporter]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' progress prints and registration log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


class OnnxPredictor:
    """Run an ONNX model with ONNX Runtime behind a model's call signature.

    `predictor(x)`: x a float tensor or numpy array (N, C, *S) -> float32 torch tensor (a list
    when the model has several outputs). `eval()` / `to()` are accepted no-ops so code written
    for nn.Modules can use it. Attributes: `path`, `session`, `input_name`, `output_names`.
    `threads`: intra-op threads (default: torch's); `spinning`: let idle workers busy-wait
    (lower latency on an otherwise idle machine, but it steals cores from everything else).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, optimization: str = "all", spinning: bool = False) -> None:
        _require_onnx()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        if threads is None:
            threads = torch.get_num_threads()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        # ORT's worker threads busy-wait after each run by default, which starves torch (and
        # anything else) on a machine with few cores; off unless asked for
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.training = False

    def __call__(self, x: Any) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = self.session.run(self.output_names, {self.input_name: x})
        tensors = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outs]
        return tensors[0] if len(tensors) == 1 else tensors

    def eval(self) -> "OnnxPredictor":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OnnxPredictor":
        return self

    def __repr__(self) -> str:
        return f"OnnxPredictor('{self.path}', providers={self.session.get_providers()})"
