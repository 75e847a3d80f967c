"""Planning: a dataset fingerprint, and a training plan derived from it, the device and a time budget.

    from unetkit.planning import dataset_fingerprint, plan
    fp = dataset_fingerprint("data/")          # cached
    p = plan("data/", budget="10m")            # p.config is a TrainConfig; print(p.table())
"""
from unetkit.planning.fingerprint import MODALITIES, Fingerprint, dataset_fingerprint

__all__ = ["MODALITIES", "Fingerprint", "dataset_fingerprint"]
from unetkit.planning.planner import Plan, parse_budget, parse_memory, plan  # noqa: E402

__all__ += ["Plan", "parse_budget", "parse_memory", "plan"]
