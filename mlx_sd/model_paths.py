"""Where a model named by the user lives: the one rule shared by the CLI and the app.

"demo" names the small demo model bundled in resources/demo/; anything else is a model folder path or,
when no such folder exists, the name of a model in the library (mlx_sd.library, `models/<name>/`).
(A folder that happens to be called "demo" is reached as ./demo.)
"""

from __future__ import annotations

import os
from pathlib import Path

from .library import Library
from .model_format import MODEL_JSON, ModelFolderError
from .resources import resource

DEMO_NAME = "demo"
DEMO_FOLDER = resource("demo")


def demo_available(folder: Path | None = None) -> bool:
    return ((folder or DEMO_FOLDER) / MODEL_JSON).is_file()


def resolve_model_folder(
    name: str | os.PathLike[str], demo_folder: Path | None = None, library: Library | None = None
) -> Path:
    """The folder of the model called `name`: DEMO_NAME is the bundled demo model (in `demo_folder`,
    by default DEMO_FOLDER), an existing path or one with a folder separator is that folder, and any
    other name is looked up among `library`'s models (without a library: the path as given).

    Raises ModelFolderError when the demo model is asked for but not installed, and LibraryError (naming
    the closest models) for a name the library does not hold. Whether a folder is a usable model is
    checked when it is read (model_format.read_config)."""
    if os.fspath(name) == DEMO_NAME:
        demo_folder = demo_folder or DEMO_FOLDER
        if not demo_available(demo_folder):
            raise ModelFolderError(
                f"the bundled demo model is not installed: expected {demo_folder / MODEL_JSON}; "
                "pass a converted model folder instead"
            )
        return demo_folder
    path = Path(name).expanduser()
    text = os.fspath(name)
    if library is None or _exists(path) or os.sep in text or (os.altsep and os.altsep in text):
        return path
    return library.find("models", text)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for a path is no folder
        return False
