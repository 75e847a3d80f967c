"""A small load test on 127.0.0.1 (the full one is benchmarks/bench_serve_load.py): concurrent clients
against a real uvicorn server with two prediction workers sharing one model; no errors, every mask is
the one of the image its request sent, and memory stays flat."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="serving needs the 'serve' extra: pip install 'unetkit[serve]'")
import uvicorn  # noqa: E402

from _serve_helpers import nuclei_model_file  # noqa: E402
from unetkit.datasets import load_dataset  # noqa: E402
from unetkit.inference.predictor import Predictor  # noqa: E402
from unetkit.serve import ServeConfig, create_app  # noqa: E402
from unetkit.serve.loadtest import rss_mb, run_load  # noqa: E402


def test_concurrent_clients_get_their_own_masks(tmp_path) -> None:
    model = nuclei_model_file()
    nuclei = load_dataset("dsb2018-nuclei").image
    images = [nuclei[:, 40 * i:40 * i + 48, 30 * i:30 * i + 56] for i in range(8)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two workers on two cores
    try:
        predictor = Predictor.from_checkpoint(model, device="cpu")
        expected = [predictor.predict_labels(image)[1][0] for image in images]
        assert len({e.tobytes() for e in expected}) == len(images)  # a mix-up would show
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app([str(model)], ServeConfig(workers=2, max_queue=8))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        run_load(url, "nuclei", images, expected, clients=2, duration=30, max_requests=16)  # warm-up
        result = run_load(url, "nuclei", images, expected, clients=4, duration=30, max_requests=48,
                          memory=rss_mb)
        server.should_exit = True
        thread.join(10)
    finally:
        torch.set_num_threads(threads)
    print(result.summary())
    assert result.requests == 48 and not result.errors and result.mismatches == 0
    assert max(result.memory_mb) - result.memory_mb[0] < 40  # MiB: no growth with the number of requests
    with pytest.raises(ValueError, match="only target this machine"):
        run_load("http://10.1.2.3:8000", "nuclei", images, expected)
