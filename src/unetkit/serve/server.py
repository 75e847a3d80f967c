"""`serve()`: run the app with uvicorn, loopback by default; other addresses need an API key."""
from __future__ import annotations

import ipaddress
import os
import sys
from typing import Sequence

from unetkit.errors import ConfigError

API_KEY_ENV = "UNETKIT_API_KEY"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_size(text: str | int) -> int:
    """`1048576`, `100k`, `256M`, `1G` (binary units) -> bytes."""
    if isinstance(text, int):
        return text
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in "KMG" else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise ConfigError(f"size {text!r}: give bytes or a number with K, M or G (e.g. 256M)") from None
    if size < 1:
        raise ConfigError(f"size {text!r} must be positive")
    return size


def check_bind(host: str, api_key: str | None) -> str | None:
    """Refuse a non-loopback bind without an API key; return a warning to print for one with a key."""
    if is_loopback(host):
        return None
    if not api_key:
        raise ConfigError(f"--host {host} makes the server reachable from other machines; give an API key "
                          f"(--api-key or the {API_KEY_ENV} environment variable) or keep the default 127.0.0.1")
    return (f"warning: serving on {host}, reachable from other machines; every API request must carry the "
            f"API key (X-API-Key header). Put a TLS proxy in front for anything beyond a trusted network.")


def serve(models: Sequence[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          api_key: str | None = None, max_upload: str | int = "256M", max_pixels: int = 2**27,
          max_queue: int = 16, device: str = "auto", threads: int | None = None, log_level: str = "info") -> None:
    """Serve `models` (model files, run folders or NAME=PATH) until interrupted.

    `threads`: torch intra-op threads (default: the CPU cores divided among the `workers`, so
    concurrent predictions do not oversubscribe the machine).
    """
    import torch
    import uvicorn

    from unetkit.serve.app import ServeConfig, create_app

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    warning = check_bind(host, api_key)
    if workers < 1 or max_queue < 0 or max_pixels < 1:
        raise ConfigError("--workers and --max-pixels must be >= 1 and --max-queue >= 0")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be >= 1")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
    config = ServeConfig(max_upload=parse_size(max_upload), max_pixels=int(max_pixels), workers=workers,
                         max_queue=max_queue, api_key=api_key, device=device)
    app = create_app(models, config)
    if warning:
        print(warning, file=sys.stderr)
    names = ", ".join(app.state.models)
    print(f"unetkit: serving {names} at http://{host if ':' not in host else f'[{host}]'}:{port}/ "
          f"({workers} worker(s); Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
