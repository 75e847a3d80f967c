"""Architecture search under a latency budget on the target device.

    from unetkit.search import search
    result = search("dsb2018-nuclei", latency="30ms", input_size=(512, 512), budget="10m")

The package itself is callable: `unetkit.search(...)` is `unetkit.search.search(...)`.
Parts: `space` (genes over the registry's models),
`latency` (measuring, the per-device cache, the predictor), `engine` (the resumable evolution),
`proxy` (short training through `unetkit.training.train`), `pareto` (front table and figure).
"""
from unetkit.search.api import SearchResult, parse_duration, parse_latency, parse_size, search
from unetkit.search.space import Candidate, SearchSpace, to_candidate

__all__ = ["search", "SearchResult", "SearchSpace", "Candidate", "to_candidate", "parse_duration", "parse_latency",
           "parse_size"]


class _CallableModule(type(__import__("sys"))):
    """This package is callable, so `unetkit.search(...)` runs a search while
    `unetkit.search.latency` etc. stay importable submodules."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)

    __call__.__doc__ = search.__doc__


__import__("sys").modules[__name__].__class__ = _CallableModule
