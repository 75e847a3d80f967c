"""A bounded load test against a running server: concurrent clients, every answer checked.

`run_load(url, model, images, expected, clients=4, duration=10, max_requests=200)` sends PNG uploads
from `clients` threads until `duration` seconds or `max_requests` requests have passed (whichever
comes first; it always stops by itself), and checks that each returned mask equals `expected[i]`
for the image `i` it sent, so lost or mixed-up results are caught. Only loopback URLs are accepted.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from unetkit.serve.server import is_loopback


@dataclass
class LoadResult:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    memory_mb: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> str:
        mem = ""
        if len(self.memory_mb) >= 2:
            mem = f"; server RSS {self.memory_mb[0]:.0f} -> {self.memory_mb[-1]:.0f} MiB (max {max(self.memory_mb):.0f})"
        return (f"{self.requests} requests in {self.seconds:.1f} s = {self.rate:.2f} req/s; latency p50 "
                f"{1000 * self.percentile(50):.0f} ms, p95 {1000 * self.percentile(95):.0f} ms; "
                f"{len(self.errors)} errors, {self.mismatches} mismatched masks{mem}")


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def run_load(url: str, model: str, images: Sequence[np.ndarray], expected: Sequence[np.ndarray],
             clients: int = 4, duration: float = 10.0, max_requests: int = 200,
             memory: Callable[[], float] | None = None, query: str = "") -> LoadResult:
    """Hammer `url/predict/model` from `clients` threads (see the module docstring)."""
    import httpx
    from PIL import Image

    if not is_loopback(urlparse(url).hostname or ""):
        raise ValueError(f"{url}: load tests only target this machine (127.0.0.1, localhost, ::1)")
    payloads = [encode_png(image) for image in images]
    result = LoadResult()
    lock = threading.Lock()
    issued = iter(range(max_requests))
    start = time.perf_counter()
    stop_at = start + duration

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as session:
            while time.perf_counter() < stop_at:
                with lock:
                    n = next(issued, None)
                if n is None:
                    return
                index = (n * 7 + worker) % len(payloads)
                t0 = time.perf_counter()
                try:
                    r = session.post(f"/predict/{model}{query}",
                                     files={"file": (f"img{index}.png", payloads[index], "image/png")})
                except httpx.HTTPError as err:
                    with lock:
                        result.errors.append(f"{type(err).__name__}: {err}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    result.requests += 1
                    result.latencies.append(elapsed)
                    if r.status_code != 200:
                        result.errors.append(f"{r.status_code}: {r.text[:200]}")
                    elif not np.array_equal(np.array(Image.open(io.BytesIO(r.content))), expected[index]):
                        result.mismatches += 1

    def sample_memory() -> None:
        while any(t.is_alive() for t in threads):
            result.memory_mb.append(memory())
            time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    sampler = threading.Thread(target=sample_memory, daemon=True) if memory else None
    if sampler:
        result.memory_mb.append(memory())
        sampler.start()
    for t in threads:
        t.join(duration + 180)
    result.seconds = time.perf_counter() - start
    if sampler:
        sampler.join(5)
        result.memory_mb.append(memory())
    return result


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
