"""`unetkit serve`: model files -> an HTTP API and a web page (needs the `serve` extra)."""
from __future__ import annotations

from typing import List, Optional

import typer

from unetkit.cli.common import fail, user_errors


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        models: List[str] = typer.Argument(..., help="Model files or run folders (NAME=PATH to name one)."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on (non-loopback needs an API key)."),
        port: int = typer.Option(8000, help="Port."),
        workers: int = typer.Option(1, help="Predictions run at once (the rest wait in a bounded queue)."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="UNETKIT_API_KEY",
                                              help="Key every API request must send (X-API-Key)."),
        max_upload: str = typer.Option("256M", "--max-upload", help="Largest request body (e.g. 64M, 1G)."),
        max_pixels: int = typer.Option(2**27, "--max-pixels", help="Largest image, pixels x slices x channels."),
        max_queue: int = typer.Option(16, "--max-queue", help="Predictions that may wait (503 beyond)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
        threads: Optional[int] = typer.Option(None, help="Torch threads (default: CPU cores / workers)."),
    ) -> None:
        """Serve models: a web page at / and an HTTP API (/models, /predict/MODEL, /jobs)."""
        try:
            import fastapi  # noqa: F401
            import python_multipart  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as err:
            fail(f"serving needs the 'serve' extra ({err.name} is missing): pip install 'unetkit[serve]'")
        from unetkit.serve import serve as run

        with user_errors():
            run(models, host=host, port=port, workers=workers, api_key=api_key, max_upload=max_upload,
                max_pixels=max_pixels, max_queue=max_queue, device=device, threads=threads)
