"""loraprep's library. `prep.__version__` is read from the installed metadata when first asked for
(importlib.metadata scans the environment: ~20 ms no command needs at start-up)."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "__version__":
        raise AttributeError(f"module 'prep' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("loraprep")
    except PackageNotFoundError:  # running from a source tree without installation
        found = "0.1.0"
    globals()["__version__"] = found
    return found
