"""The HTTP API (FastAPI's test client): every endpoint, every format, every bad input.

Each prediction is checked against `Predictor.predict_file` / `unetkit predict` on the same file:
the server must run the same code path, not a second implementation.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("fastapi", reason="serving needs the 'serve' extra: pip install 'unetkit[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from _serve_helpers import nuclei_model_file  # noqa: E402
import unetkit  # noqa: E402
from unetkit.data.io import VolumeMeta, read_mask, read_volume, write_image  # noqa: E402
from unetkit.datasets import load_dataset  # noqa: E402
from unetkit.errors import ConfigError  # noqa: E402
from unetkit.inference.predictor import Predictor  # noqa: E402
from unetkit.serve import ServeConfig, check_bind, create_app, parse_size  # noqa: E402
from unetkit.serve.files import RequestProblem, decode_array  # noqa: E402
from unetkit.serve.jobs import JobQueue  # noqa: E402
from unetkit.serve.models import parse_specs  # noqa: E402


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_dataset("dsb2018-nuclei").image[:, 200:296, 100:180]  # (1, 96, 80) uint16


@pytest.fixture(scope="module")
def model3d(tmp_path_factory) -> Path:
    model = unetkit.create_model("unet", spatial_dims=3, features=(2, 4), num_classes=3)
    path = tmp_path_factory.mktemp("m3d") / "vol3d.safetensors"
    return unetkit.save_model(model, path, extra={"patch_size": [8, 16, 16], "class_names": ["bg", "a", "b"]})


@pytest.fixture(scope="module")
def client(model3d: Path) -> TestClient:
    app = create_app([str(nuclei_model_file()), str(model3d)], ServeConfig(max_upload=2 * 2**20, max_pixels=300_000))
    with TestClient(app) as c:
        yield c


def _bytes(image: np.ndarray, suffix: str, tmp_path: Path, meta: VolumeMeta | None = None) -> tuple[Path, bytes]:
    path = write_image(tmp_path / f"in{suffix}", image, meta, overwrite=True)
    return path, path.read_bytes()


def _post(client: TestClient, url: str, name: str, data: bytes, **kw):
    return client.post(url, files={"file": (name, data, "application/octet-stream")}, **kw)


def _reference(model: Path, path: Path, tmp_path: Path, **options) -> dict:
    predictor = Predictor.from_checkpoint(model, device="cpu")
    return predictor.predict_file(path, tmp_path / "ref", overlay=False, overwrite=True, **options)


# ---------------------------------------------------------------- info endpoints
def test_health_models_and_page(client: TestClient, model3d: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["nuclei", "vol3d"]
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    nuclei = models["nuclei"]
    assert nuclei["sha256"] == hashlib.sha256(nuclei_model_file().read_bytes()).hexdigest()
    assert (nuclei["arch"], nuclei["dims"], nuclei["in_channels"], nuclei["mode"]) == ("unet", 2, 1, "binary")
    assert [c["name"] for c in nuclei["classes"]] == ["background", "nucleus"]
    assert nuclei["normalisation"] == {"mode": "percentile", "lower": 1.0, "upper": 99.8}
    assert models["vol3d"]["dims"] == 3 and [c["name"] for c in models["vol3d"]["classes"]] == ["bg", "a", "b"]
    assert models["vol3d"]["sha256"] == hashlib.sha256(model3d.read_bytes()).hexdigest()
    page = client.get("/")
    assert page.status_code == 200 and "<title>unetkit" in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


# ---------------------------------------------------------------- formats
def test_png_mask_is_byte_identical_to_predict(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    path, data = _bytes(crop, ".png", tmp_path)
    ref = _reference(nuclei_model_file(), path, tmp_path, measure=True)
    r = _post(client, "/predict/nuclei?measure=true", "cells.png", data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == ref["mask"].read_bytes()
    assert json.loads(r.headers["x-unetkit-counts"]) == ref["counts"]
    assert 'filename="cells_mask.png"' in r.headers["content-disposition"]


def test_json_has_mask_counts_and_the_predict_csv(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    path, data = _bytes(crop, ".png", tmp_path)
    ref = _reference(nuclei_model_file(), path, tmp_path, measure=True, split=True)
    url = "/predict/nuclei?measure=true&split=true&preview=true"
    for query, kw in (("&format=json", {}), ("", {"headers": {"Accept": "application/json"}})):
        body = _post(client, url + query, "c.png", data, **kw).json()
        np.testing.assert_array_equal(decode_array(body["mask"]), read_mask(ref["mask"]))
        assert body["counts"] == ref["counts"] and body["counts"]["total"] > 0
        assert body["objects_csv"] == ref["objects"].read_text()
        assert len(body["objects"]) == body["counts"]["total"]
        preview = decode_array(body["preview"])
        assert preview.shape == (96, 80, 1) and preview.dtype == np.uint8 and preview.max() == 255


def test_tiff_jpeg_and_accept(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    path, data = _bytes(crop, ".tif", tmp_path)  # 16-bit TIFF -> TIFF mask
    ref_file = _reference(nuclei_model_file(), path, tmp_path)["mask"]
    ref = read_mask(ref_file)
    r = _post(client, "/predict/nuclei", "c.tif", data)
    assert r.headers["content-type"] == "image/tiff" and r.content == ref_file.read_bytes()
    r = _post(client, "/predict/nuclei", "c.tif", data, headers={"Accept": "image/png"})
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))), ref)
    jpg, data = _bytes((crop / 256).astype(np.uint8), ".jpg", tmp_path)  # 8-bit JPEG -> PNG mask
    r = _post(client, "/predict/nuclei", "c.jpeg", data)
    assert r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))),
                                  read_mask(_reference(nuclei_model_file(), jpg, tmp_path)["mask"]))


def test_nifti_keeps_affine_2d_and_3d(client: TestClient, crop: np.ndarray, model3d: Path, tmp_path: Path) -> None:
    affine = np.array([[0.5, 0, 0, 10], [0, 0.7, 0, -3], [0, 0, 2.0, 1], [0, 0, 0, 1]])
    meta = VolumeMeta(spacing=(2.0, 0.7, 0.5), affine=affine)
    path, data = _bytes(crop[:, None], ".nii.gz", tmp_path, meta)  # one slice: fine for the 2D model
    r = _post(client, "/predict/nuclei", "scan.nii.gz", data)
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    (tmp_path / "got.nii.gz").write_bytes(r.content)
    mask, got = read_volume(tmp_path / "got.nii.gz")
    np.testing.assert_allclose(got.affine, affine)
    np.testing.assert_array_equal(mask[0, 0], read_mask(_reference(nuclei_model_file(), path, tmp_path)["mask"]))

    volume = np.random.default_rng(0).random((1, 6, 20, 18)).astype(np.float32)
    path, data = _bytes(volume, ".nii", tmp_path, meta)
    ref = _reference(model3d, path, tmp_path, measure=True)
    body = _post(client, "/predict/vol3d?measure=true&format=json", "vol.nii", data).json()
    np.testing.assert_array_equal(decode_array(body["mask"]), read_mask(ref["mask"]))
    assert body["counts"] == ref["counts"] and np.allclose(body["spacing"], [2.0, 0.7, 0.5])
    r = _post(client, "/predict/vol3d", "vol.nii", data)
    (tmp_path / "got.nii").write_bytes(r.content)
    np.testing.assert_allclose(read_volume(tmp_path / "got.nii")[1].affine, affine)
    tif = _post(client, "/predict/vol3d?format=tif", "vol.nii", data)
    assert tifffile.imread(io.BytesIO(tif.content)).shape == (6, 20, 18)
    r = _post(client, "/predict/vol3d?format=png", "vol.nii", data)
    assert r.status_code == 422 and "vol.nii" in r.json()["error"] and ".png" in r.json()["error"]


def test_options_match_the_predictor(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    _, data = _bytes(crop, ".png", tmp_path)
    base = Predictor.from_checkpoint(nuclei_model_file(), device="cpu")
    for query, predictor in [("tta=true", base.with_options(tta=True)),
                             ("roi=32&overlap=0.25", base.with_options(roi_size=32, overlap=0.25)),
                             ("threshold=0.9", base.with_options(threshold=0.9))]:
        body = _post(client, f"/predict/nuclei?format=json&{query}", "c.png", data).json()
        expected = predictor.predict_array(crop).labels[0]
        np.testing.assert_array_equal(decode_array(body["mask"]), expected, err_msg=query)
    default = base.predict_array(crop).labels.sum()
    assert base.with_options(threshold=0.9).predict_array(crop).labels.sum() < default  # the option matters
    assert base.threshold == 0.5 and base.tta is False  # with_options left the shared predictor alone


# ---------------------------------------------------------------- jobs
def test_jobs_progress_then_result(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    path, data = _bytes(crop, ".png", tmp_path)
    ref = _reference(nuclei_model_file(), path, tmp_path, measure=True)
    r = _post(client, "/jobs?model=nuclei&measure=true", "c.png", data)
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    url = r.json()["url"]
    for _ in range(600):
        info = client.get(url).json()
        assert 0.0 <= info["progress"] <= 1.0
        if info["status"] == "done":
            break
        time.sleep(0.05)
    assert info["status"] == "done" and info["progress"] == 1.0
    assert info["result"]["counts"] == ref["counts"]
    np.testing.assert_array_equal(decode_array(info["result"]["mask"]), read_mask(ref["mask"]))
    assert client.get(url + "?format=mask").content == ref["mask"].read_bytes()
    assert client.get("/jobs/nope").status_code == 404

    r = _post(client, "/jobs?model=nuclei", "bad.png", data[:300])  # fails in the worker
    for _ in range(200):
        info = client.get(r.json()["url"]).json()
        if info["status"] == "failed":
            break
        time.sleep(0.05)
    assert info["error"]["status"] == 400 and "bad.png" in info["error"]["message"]


def test_bounded_queue_refuses_with_503() -> None:
    import threading

    gate = threading.Event()
    queue = JobQueue(workers=1, max_queue=1)
    first = queue.submit(lambda job: gate.wait(10), "m", "a", keep=True)
    queue.submit(lambda job: 1, "m", "b", keep=True)
    with pytest.raises(RequestProblem) as err:
        queue.submit(lambda job: 1, "m", "c", keep=True)
    assert err.value.status == 503
    gate.set()
    first.future.result(10)
    queue.submit(lambda job: 1, "m", "d", keep=False).future.result(10)  # room again
    queue.shutdown()


# ---------------------------------------------------------------- bad input
def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_inputs(crop: np.ndarray, tmp_path: Path) -> list[tuple[str, str, bytes, int, str]]:
    """(label, file name, bytes, expected status, words the message must hold)."""
    _, png = _bytes(crop, ".png", tmp_path)
    rgb = (np.random.default_rng(1).random((3, 40, 40)) * 255).astype(np.uint8)
    _, colour = _bytes(rgb, ".png", tmp_path)
    pages = io.BytesIO()
    tifffile.imwrite(pages, np.arange(2700, dtype=np.uint16).reshape(3, 30, 30), photometric="minisblack")
    _, volume = _bytes(np.random.default_rng(2).random((1, 4, 30, 30)).astype(np.float32), ".nii.gz", tmp_path)
    big = io.BytesIO()
    Image.new("L", (1000, 1000)).save(big, format="PNG")  # 1 Mpx, a few KB: over max_pixels
    bomb = _png_header(30000, 30000)  # a header claiming 900 Mpx: refused before any decoding
    return [
        ("truncated PNG", "cut.png", png[:300], 400, "cut.png: unreadable or truncated"),
        ("not an image", "fake.png", b"hello, world" * 10, 400, "fake.png: unreadable"),
        ("empty file", "empty.tif", b"", 400, "empty.tif: the file is empty"),
        ("truncated NIfTI", "cut.nii.gz", volume[:len(volume) // 2], 400, "cut.nii.gz: unreadable"),
        ("unsupported type", "scan.gif", b"GIF89a....", 415, "scan.gif: unsupported file type '.gif'"),
        ("no suffix", "image", png, 415, "unsupported file type '(none)'"),
        ("wrong channels (RGB)", "colour.png", colour, 422, "colour.png: has 3 channel(s) but the model"),
        ("wrong channels (pages)", "pages.tif", pages.getvalue(), 422, "pages.tif: has 3 channel(s)"),
        ("wrong dims (volume, 2D model)", "vol.nii.gz", volume, 422, "vol.nii.gz: is a volume of depth 4"),
        ("too many pixels", "huge.png", big.getvalue(), 413, "huge.png: 1,000,000 pixels is over"),
        ("decompression bomb", "bomb.png", bomb, 413, "bomb.png: image too large"),
    ]


def test_bad_inputs_get_named_problems_never_500(client: TestClient, crop: np.ndarray, tmp_path: Path) -> None:
    rows = []
    for label, name, data, status, words in _bad_inputs(crop, tmp_path):
        r = _post(client, "/predict/nuclei", name, data)
        assert r.status_code == status, (label, r.status_code, r.text[:200])
        rows.append((label, r.status_code, r.json()["error"]))
        assert words in r.json()["error"], (label, r.json())
        assert "Traceback" not in r.text and "/tmp" not in r.text and "unetkit-serve" not in r.text
    _, png = _bytes(crop, ".png", tmp_path)
    more = [
        (_post(client, "/predict/vol3d", "c.png", png), 415, "model 'vol3d' is 3D"),
        (_post(client, "/predict/nope", "c.png", png), 404, "no model 'nope'; this server has: nuclei, vol3d"),
        (client.post("/predict/nuclei"), 422, "file: Field required"),
        (_post(client, "/predict/nuclei?format=gif", "c.png", png), 422, "format 'gif'"),
        (_post(client, "/predict/nuclei?roi=big", "c.png", png), 422, "roi 'big'"),
        (_post(client, "/predict/nuclei?threshold=2", "c.png", png), 422, "threshold"),
        (_post(client, "/predict/nuclei?min_size=-1", "c.png", png), 422, "min_size"),
        (_post(client, "/predict/nuclei", "big.png", b"0" * (3 * 2**20)), 413, "over this server's limit"),
    ]
    for r, status, words in more:
        assert r.status_code == status and words in r.json()["error"], r.json()
    print("\n".join(f"{a} | {b} | {c}" for a, b, c in rows))


def test_streamed_body_over_the_limit_is_cut_off(client: TestClient) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"x" * 2**17

    r = client.post("/predict/nuclei", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413 and "over this server's limit" in r.json()["error"]


def test_unexpected_error_is_a_500_without_details(crop: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    app = create_app([str(nuclei_model_file())])
    entry = app.state.models["nuclei"]

    def boom(*args, **kwargs):
        raise RuntimeError("secret detail /var/lib/x")

    monkeypatch.setattr(type(entry.predictor), "predict_labels", boom)
    _, png = _bytes(crop, ".png", tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = _post(c, "/predict/nuclei", "c.png", png)
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    assert "internal error" in r.json()["error"]


def test_uploads_stay_in_a_temporary_folder(crop: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    _, png = _bytes(crop, ".png", tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with TestClient(create_app([str(nuclei_model_file())])) as c:
        for name in ("../../evil.png", "..\\..\\evil.png", "/etc/passwd.png", "a/../../b.png"):
            r = _post(c, "/predict/nuclei?format=json&measure=true", name, png)
            assert r.status_code == 200 and "/" not in r.json()["image"] and "\\" not in r.json()["image"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not any(work.iterdir()) and not any(scratch.iterdir())  # nothing left behind


# ---------------------------------------------------------------- safety settings
def test_api_key(crop: np.ndarray) -> None:
    with TestClient(create_app([str(nuclei_model_file())], ServeConfig(api_key="s3cret"))) as c:
        assert c.get("/health").status_code == 200 and c.get("/health").json()["auth"] is True
        assert c.get("/").status_code == 200
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/predict/nuclei").status_code == 401
        assert c.get("/jobs/x").status_code == 401


def test_bind_rules_and_sizes() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert check_bind(host, None) is None
    with pytest.raises(ConfigError, match="--api-key or the UNETKIT_API_KEY"):
        check_bind("0.0.0.0", None)
    assert "reachable from other machines" in check_bind("0.0.0.0", "key")
    assert parse_size("256M") == 256 * 2**20 and parse_size("1g") == 2**30 and parse_size("100") == 100
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_serve_cli_refuses_public_bind_without_key(monkeypatch) -> None:
    from typer.testing import CliRunner

    from unetkit.cli.main import app

    monkeypatch.delenv("UNETKIT_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve", str(nuclei_model_file()), "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "UNETKIT_API_KEY" in result.output


def test_model_names_and_run_folders(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    run.mkdir()
    model = nuclei_model_file().read_bytes()
    (run / "last.safetensors").write_bytes(model)
    assert parse_specs([str(run / "last.safetensors")]) == [("demo", run / "last.safetensors")]
    assert parse_specs([str(run)]) == [("demo", run / "last.safetensors")]
    (run / "best.safetensors").write_bytes(model)
    assert parse_specs([f"cells={run}"]) == [("cells", run / "best.safetensors")]
    with pytest.raises(ConfigError, match="both be served as 'demo'"):
        parse_specs([str(run), str(run / "last.safetensors")])
    with pytest.raises(ConfigError, match="no such model file"):
        parse_specs([str(tmp_path / "missing.safetensors")])


def test_progress_is_reported_per_window_batch(crop: np.ndarray) -> None:
    predictor = Predictor.from_checkpoint(nuclei_model_file(), device="cpu", roi_size=32, overlap=0.5, batch_size=4)
    calls: list[tuple[int, int]] = []
    predictor.predict_array(crop, progress=lambda done, total: calls.append((done, total)))
    # 96x80 with 32-pixel windows at half overlap: 5 x 4 = 20 windows -> 5 batches of 4
    assert calls == [(i, 5) for i in range(1, 6)]
