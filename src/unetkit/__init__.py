"""unetkit: the U-Net family of segmentation networks, 2D and 3D."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("unetkit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

from unetkit.models import create_model, list_models, load_pretrained, register_model  # noqa: E402
from unetkit.io.checkpoint import load_model, save_model  # noqa: E402
from unetkit import search  # noqa: E402  (a callable package: unetkit.search(...) runs a search)


def plan(data, **options):
    """A training plan for the dataset folder `data`, fitted to the device and a time budget:
    `unetkit.planning.plan` (options: masks, mask_suffix, device, budget, memory, modality, ...).
    The result's `.config` is a TrainConfig; `.table()` says what was chosen and why."""
    from unetkit.planning import plan as _plan

    return _plan(data, **options)


def train(config_or_data=None, *, resume=None, **options):
    """Train. Given a TrainConfig (or resume= a run folder): `unetkit.training.train`. Given a dataset
    folder: plan for it (options as `plan`, plus budget= and overrides=["section.field=value"]) and
    train, the whole bounded by the budget (`unetkit.training.run.auto_train`)."""
    from unetkit.training.config import TrainConfig
    from unetkit.training.run import auto_train, train as _train

    if resume is not None or isinstance(config_or_data, TrainConfig):
        return _train(config_or_data, resume=resume, **options)
    if config_or_data is None:
        raise TypeError("unetkit.train() needs a TrainConfig, a dataset folder, or resume=")
    return auto_train(config_or_data, **options)


__all__ = ["__version__", "create_model", "list_models", "register_model", "load_model", "save_model",
           "load_pretrained", "plan", "train", "search"]
