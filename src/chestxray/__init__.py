"""chestxray: Infected-vs-Normal chest X-ray classification by two-stage transfer learning.

A research tool, not a diagnostic device. The public API (`load`, `train`, `evaluate`, `export`, `Model`, ...) lives in
`chestxray.api` and is imported on first use, so that `import chestxray` stays cheap.
"""

from .notices import RESEARCH_NOTE, SYNTHETIC_NOTE
from .notices import VERSION as __version__

_API = {"Model", "load", "train", "evaluate", "export", "audit", "check_data", "import_dataset", "merge_datasets", "crossval",
        "segment_lungs", "train_lungs", "evaluate_lungs"}
__all__ = [*sorted(_API), "RESEARCH_NOTE", "SYNTHETIC_NOTE", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'chestxray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
