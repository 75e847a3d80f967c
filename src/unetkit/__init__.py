"""unetkit: the U-Net family of segmentation networks, 2D and 3D."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("unetkit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

from unetkit.models import create_model, list_models, load_pretrained, register_model  # noqa: E402
from unetkit.io.checkpoint import load_model, save_model  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "register_model", "load_model", "save_model",
           "load_pretrained"]
