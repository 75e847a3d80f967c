"""The HTTP API and the web page: `create_app(models, config)` builds the FastAPI application.

Endpoints (see README "Serving a model"):
    GET  /                 the web page (static files shipped in the package)
    GET  /health           {"status": "ok", ...}
    GET  /models           what each model is: arch, classes, channels, dims, normalisation, file hash
    POST /predict/{model}  multipart `file`; returns the mask (the input's format, or ?format= / Accept)
    POST /jobs?model=...   same form and options; returns a job id at once (202)
    GET  /jobs/{id}        progress, then the result (JSON, or the mask file with ?format=)

Every prediction goes through `Predictor.predict_labels` and `Predictor.measure_labels`, the code
`unetkit predict` runs, and masks are written with `unetkit.data.io`'s writers. One exception
handler turns every error into `{"error": message, "status": code}`: the file and the problem,
never a traceback.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from unetkit import __version__
from unetkit.data.io import PIL_SUFFIXES
from unetkit.errors import DataError, UnetkitError
from unetkit.io.checkpoint import CheckpointError
from unetkit.serve.files import (ACCEPT, FORMATS, MEDIA_TYPES, RequestProblem, check_pixels, clean_name,
                                 default_mask_suffix, encode_array, mask_file, preview, relabel_error,
                                 upload_suffix)
from unetkit.serve.jobs import Job, JobQueue
from unetkit.serve.models import ServedModel, load_models

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("unetkit.serve")


@dataclass
class ServeConfig:
    """Limits and settings of a server.

    `max_upload`: bytes of one request body (413 above); `max_pixels`: pixels of one image, every
    page, slice and channel counted (413 above); `workers`: predictions at once; `max_queue`:
    predictions waiting beyond those (503 above); `keep_jobs`: finished async jobs remembered;
    `api_key`: when set, every API request must send it (`X-API-Key` or `Authorization: Bearer`).
    """

    max_upload: int = 256 * 2**20
    max_pixels: int = 2**27
    workers: int = 1
    max_queue: int = 16
    keep_jobs: int = 32
    api_key: Optional[str] = None
    device: str = "auto"


def classify(err: BaseException) -> tuple[int, str]:
    """The status and message a client sees for an error (the one mapping used everywhere)."""
    if isinstance(err, RequestProblem):
        return err.status, err.message
    if isinstance(err, StarletteHTTPException):
        return err.status_code, str(err.detail)
    if isinstance(err, RequestValidationError):
        parts = []
        for item in err.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
        return 422, "; ".join(parts) or "invalid request"
    if isinstance(err, (UnetkitError, CheckpointError)):  # DataError, ConfigError, ...: valid request, bad content
        return 422, str(err)
    log.exception("unexpected error", exc_info=err)
    return 500, "internal error while predicting; the server log has the details"


@dataclass
class Options:
    """Per-request prediction options (the `unetkit predict` flags of the same names)."""

    tta: bool = False
    roi: Optional[str] = None
    overlap: Optional[float] = None
    threshold: Optional[float] = None
    measure: bool = False
    split: bool = False
    min_size: int = 0
    fill_holes: bool = False
    preview: bool = False

    def roi_size(self) -> Any:
        if not self.roi:
            return None
        try:
            sizes = [int(v) for v in self.roi.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise RequestProblem(422, f"roi {self.roi!r}: give one size or one per axis, e.g. 256 or 256,256") from None
        return sizes[0] if len(sizes) == 1 else tuple(sizes)


def create_app(models: Mapping[str, ServedModel] | Sequence[str], config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving `models` (loaded `ServedModel`s, or model files / run folders)."""
    config = config or ServeConfig()
    if not isinstance(models, Mapping):
        models = load_models(list(models), device=config.device)
    queue = JobQueue(config.workers, config.max_queue, config.keep_jobs, classify=classify)
    app = FastAPI(title="unetkit", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.models, app.state.config, app.state.queue = models, config, queue

    async def problem(request: Request, err: Exception) -> JSONResponse:
        status, message = classify(err)
        headers = {"Retry-After": "2"} if status == 503 else None
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    for kind in (RequestProblem, StarletteHTTPException, RequestValidationError, UnetkitError, CheckpointError, Exception):
        app.add_exception_handler(kind, problem)
    app.add_middleware(GZipMiddleware, minimum_size=4096)
    app.add_middleware(BodyLimit, max_bytes=config.max_upload)
    app.router.add_event_handler("shutdown", queue.shutdown)

    def authorised(request: Request) -> None:
        if not config.api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise RequestProblem(401, "missing or wrong API key (send the X-API-Key header)")

    def model_of(name: str) -> ServedModel:
        if name not in models:
            raise RequestProblem(404, f"no model '{clean_name(name)}'; this server has: {', '.join(models)}")
        return models[name]

    def options(tta: bool = Query(False, description="test-time augmentation (flips, 90-degree turns in 2D)"),
                roi: Optional[str] = Query(None, description="window size: one value or one per axis (256,256)"),
                overlap: Optional[float] = Query(None, ge=0.0, lt=1.0, description="window overlap in [0, 1)"),
                threshold: Optional[float] = Query(None, gt=0.0, lt=1.0, description="binary/multilabel threshold"),
                measure: bool = Query(False, description="per-object table and counts (as predict --measure)"),
                split: bool = Query(False, description="separate touching objects when measuring"),
                min_size: int = Query(0, ge=0, description="remove objects smaller than this"),
                fill_holes: bool = Query(False, description="fill holes inside objects"),
                preview: bool = Query(False, description="JSON: add the image as 8-bit for display")) -> Options:
        return Options(tta, roi, overlap, threshold, measure, split, min_size, fill_holes, preview)

    def submit(entry: ServedModel, upload: UploadFile, opts: Options, keep: bool) -> Job:
        name = clean_name(upload.filename)
        suffix = upload_suffix(name)
        if entry.predictor.spatial_dims == 3 and suffix in PIL_SUFFIXES:
            raise RequestProblem(415, f"{name}: model '{entry.name}' is 3D and takes volumes (NIfTI or a TIFF "
                                      f"stack), not {suffix} images")
        predictor = entry.predictor.with_options(roi_size=opts.roi_size(), overlap=opts.overlap, tta=opts.tta,
                                                 threshold=opts.threshold)
        folder = Path(tempfile.mkdtemp(prefix="unetkit-serve-"))
        try:
            path = folder / f"upload{suffix}"
            with open(path, "wb") as f:
                shutil.copyfileobj(upload.file, f, 1 << 20)
            if path.stat().st_size == 0:
                raise RequestProblem(400, f"{name}: the file is empty")
            check_pixels(path, name, config.max_pixels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def work(job: Job) -> dict[str, Any]:
            return run_prediction(entry, predictor, path, name, suffix, opts, folder, job)

        return queue.submit(work, entry.name, name, keep=keep, cleanup=lambda: shutil.rmtree(folder, True))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "models": list(models), "queue": queue.stats(),
                "auth": bool(config.api_key)}

    @app.get("/models", dependencies=[Depends(authorised)])
    def list_served() -> dict[str, Any]:
        return {"models": [m.info for m in models.values()],
                "limits": {"max_upload": config.max_upload, "max_pixels": config.max_pixels}}

    @app.post("/predict/{model}", dependencies=[Depends(authorised)])
    async def predict(request: Request, model: str, file: UploadFile = File(..., description="the image"),
                      opts: Options = Depends(options),
                      format: Optional[str] = Query(None, description="json, png, tif, nii or nii.gz")) -> Response:
        entry = model_of(model)
        wanted = response_format(format, request.headers.get("accept"))
        job = await run_in_threadpool(submit, entry, file, opts, False)  # copies the upload: off the event loop
        result = await asyncio.wrap_future(job.future)
        return await run_in_threadpool(render, result, wanted)

    @app.post("/jobs", status_code=202, dependencies=[Depends(authorised)])
    async def create_job(model: str = Query(..., description="a served model's name"),
                         file: UploadFile = File(...), opts: Options = Depends(options)) -> dict[str, Any]:
        job = await run_in_threadpool(submit, model_of(model), file, opts, True)
        return {**job.describe(), "url": f"/jobs/{job.id}"}

    @app.get("/jobs/{job_id}", dependencies=[Depends(authorised)])
    def get_job(request: Request, job_id: str,
                format: Optional[str] = Query(None, description="when done: json (default), mask, png, tif, "
                                                                "nii or nii.gz")) -> Response:
        job = queue.get(job_id)
        wanted = response_format(format, request.headers.get("accept"), default="json")
        if job.status != "done" or wanted == "json":
            body = job.describe()
            if job.status == "done":
                body["result"] = job_json(job.result)
            return JSONResponse(body)
        return render(job.result, wanted)

    return app


def response_format(query: Optional[str], accept: Optional[str], default: str = "mask") -> str:
    """`?format=` first, then a recognised `Accept` type, else `default` (mask: the input's format)."""
    if query:
        key = query.lower().lstrip(".")
        if key in ("mask", "native"):
            return "mask"
        if key not in FORMATS:
            raise RequestProblem(422, f"format {query!r}: choose json, mask (the input's format), "
                                      f"png, tif, nii or nii.gz")
        return key
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in ACCEPT:
            return ACCEPT[media]
    return default


def run_prediction(entry: ServedModel, predictor: Any, path: Path, name: str, suffix: str, opts: Options,
                   folder: Path, job: Job) -> dict[str, Any]:
    """Read the upload, predict and measure it (in a worker thread); the result is kept in memory."""
    from unetkit.evaluation.measure import count_objects, write_objects_csv
    from unetkit.inference.predictor import file_spacing, read_input

    try:
        image, meta = read_input(path, predictor.spatial_dims)
    except DataError as err:
        message = relabel_error(err, path, name)
        status = 422 if "volume of depth" in message or "not supported" in message else 400
        raise RequestProblem(status, message) from None
    job.progress = 0.05

    def progress(done: int, total: int) -> None:
        job.progress = 0.05 + 0.85 * done / max(total, 1)

    try:
        _, labels = predictor.predict_labels(image, source=name, min_size=opts.min_size, fill=opts.fill_holes,
                                             progress=progress, spacing=file_spacing(meta))
    except DataError as err:  # wrong channels or dims for this model
        raise RequestProblem(422, relabel_error(err, path, name)) from None
    multilabel = predictor.mode == "multilabel"
    result: dict[str, Any] = {"model": entry.name, "image": name, "suffix": suffix, "labels": labels,
                              "meta": meta, "multilabel": multilabel, "dims": predictor.spatial_dims,
                              "classes": entry.info["classes"]}
    if opts.measure:
        objects = predictor.measure_labels(labels, meta, split=opts.split)
        csv_path = write_objects_csv(objects, folder / "objects.csv", overwrite=True,
                                     spatial_dims=predictor.spatial_dims)
        result.update(objects=objects, counts=count_objects(objects, predictor.class_names),
                      objects_csv=csv_path.read_text())
    if opts.preview:
        result["preview"] = preview(image)
    job.progress = 1.0
    return result


def class_map(result: dict[str, Any]) -> np.ndarray:
    from unetkit.inference.predictor import _as_class_map

    return _as_class_map(result["labels"])


def job_json(result: dict[str, Any]) -> dict[str, Any]:
    """A result as JSON: the class map (multi-label: class k + 1 where channel k is set), counts, objects."""
    labels = class_map(result)
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    body: dict[str, Any] = {"model": result["model"], "image": result["image"], "dims": result["dims"],
                            "shape": list(labels.shape), "classes": result["classes"],
                            "multilabel": result["multilabel"], "mask": encode_array(labels)}
    if result["meta"] is not None:
        body["spacing"] = list(result["meta"].spacing)
    if "counts" in result:
        body.update(counts=result["counts"], objects=result["objects"], objects_csv=result["objects_csv"])
    if "preview" in result:
        body["preview"] = encode_array(result["preview"])
    return body


def render(result: dict[str, Any], wanted: str) -> Response:
    """The response for a finished prediction: JSON, or the mask file (counts in `X-Unetkit-Counts`)."""
    if wanted == "json":
        return JSONResponse(job_json(result))
    suffix = default_mask_suffix(result["suffix"], result["multilabel"]) if wanted == "mask" else FORMATS[wanted]
    with tempfile.TemporaryDirectory(prefix="unetkit-serve-") as tmp:
        try:
            target = mask_file(result["labels"], result["meta"], suffix, Path(tmp), result["multilabel"])
        except DataError as err:  # e.g. a volume asked for as PNG
            raise RequestProblem(422, f"{result['image']}: cannot return the mask as {suffix} "
                                      f"({str(err).split(': ', 1)[-1]})") from None
        payload = target.read_bytes()
    stem = result["image"][: -len(result["suffix"])] if result["image"].lower().endswith(result["suffix"]) \
        else result["image"].rsplit(".", 1)[0]
    headers = {"Content-Disposition": f'attachment; filename="{stem}_mask{suffix}"'}
    if "counts" in result:
        headers["X-Unetkit-Counts"] = json.dumps(result["counts"])
    return Response(payload, media_type=MEDIA_TYPES[suffix], headers=headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, before reading them when
    Content-Length says so, else as soon as the streamed body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    def _message(self, size: str) -> str:
        return f"upload of {size} is over this server's limit of {self.max_bytes:,} bytes (--max-upload)"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            message = self._message(f"{int(length):,} bytes")
            await JSONResponse({"error": message, "status": 413}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message(f"more than {seen:,} bytes"))
            return message

        await self.app(scope, limited, send)
