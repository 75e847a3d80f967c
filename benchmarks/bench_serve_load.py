"""Load test of `unetkit serve` on 127.0.0.1: concurrent clients, every mask checked, server memory.

    python benchmarks/bench_serve_load.py                      # tiny random model, 64x64 nuclei crops
    python benchmarks/bench_serve_load.py --model runs/demo/last.safetensors --size 256 --clients 8 \
        --duration 60 --max-requests 2000 --workers 2

Starts the server as its own process (`python -m unetkit.cli.main serve ...`), waits for /health,
computes the expected mask of every test image with the same model in this process, then runs
`unetkit.serve.loadtest.run_load` and prints requests/s, p50/p95 latency, errors, mismatched masks
and the server's resident memory before, during and after. Everything stops by itself (bounded time
and count) and only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

import unetkit
from unetkit.datasets import load_dataset
from unetkit.inference.predictor import Predictor
from unetkit.serve.loadtest import rss_mb, run_load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: a tiny random U-Net)")
    parser.add_argument("--size", type=int, default=64, help="image side (crops of the nuclei image)")
    parser.add_argument("--images", type=int, default=16, help="distinct test images")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="server --workers")
    parser.add_argument("--threads", type=int, default=None, help="server --threads (torch threads)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (upper bound)")
    parser.add_argument("--max-requests", type=int, default=200)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="unetkit-load-"))
    model = Path(args.model) if args.model else unetkit.save_model(
        unetkit.create_model("unet", features=(8, 16, 32), num_classes=1), tmp / "tiny.safetensors",
        extra={"preprocess": {"mode": "percentile", "lower": 1.0, "upper": 99.8}})
    nuclei = load_dataset("dsb2018-nuclei").image
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 512 - args.size, size=(args.images, 2))
    images = [nuclei[:, y:y + args.size, x:x + args.size] for y, x in starts]
    predictor = Predictor.from_checkpoint(model, device="cpu")
    expected = [predictor.predict_labels(image)[1][0] for image in images]

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "unetkit.cli.main", "serve", str(model), "--port", str(port),
                               "--workers", str(args.workers), "--max-queue", str(max(16, args.clients)),
                               "--device", "cpu"] + (["--threads", str(args.threads)] if args.threads else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                name = httpx.get(url + "/health", timeout=2).json()["models"][0]
                break
            except (httpx.HTTPError, KeyError):
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        run_load(url, name, images[:2], expected[:2], clients=1, duration=30, max_requests=4)  # warm-up
        result = run_load(url, name, images, expected, clients=args.clients, duration=args.duration,
                          max_requests=args.max_requests, memory=lambda: rss_mb(server.pid))
    finally:
        server.terminate()
        server.wait(30)
    print(f"model {model.name}, {args.size}x{args.size} PNG uploads, {args.clients} clients, "
          f"server --workers {args.workers} --threads {args.threads or 'default'}")
    print(result.summary())
    for error in result.errors[:5]:
        print("error:", error)
    if result.errors or result.mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
