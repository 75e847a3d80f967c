"""Serve models over HTTP: a JSON/multipart API and a web page (FastAPI + uvicorn, `unetkit[serve]`).

    from unetkit.serve import create_app, serve
    serve(["runs/demo/last.safetensors"])            # http://127.0.0.1:8000/

`create_app` imports FastAPI lazily, so `import unetkit.serve` works without the extra.
"""
from unetkit.serve.server import check_bind, is_loopback, parse_size, serve


def create_app(*args, **kwargs):  # noqa: D103 - documented in unetkit.serve.app.create_app
    from unetkit.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def __getattr__(name: str):
    if name == "ServeConfig":
        from unetkit.serve.app import ServeConfig

        return ServeConfig
    raise AttributeError(name)


__all__ = ["ServeConfig", "check_bind", "create_app", "is_loopback", "parse_size", "serve"]
