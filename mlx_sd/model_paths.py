"""Where a model named by the user lives: the one rule shared by the CLI and the app.

"demo" names the small demo model bundled in resources/demo/; anything else is a model folder path.
(A folder that happens to be called "demo" is reached as ./demo.)
"""

from __future__ import annotations

import os
from pathlib import Path

from .model_format import MODEL_JSON, ModelFolderError
from .resources import resource

DEMO_NAME = "demo"
DEMO_FOLDER = resource("demo")


def demo_available(folder: Path | None = None) -> bool:
    return ((folder or DEMO_FOLDER) / MODEL_JSON).is_file()


def resolve_model_folder(name: str | os.PathLike[str], demo_folder: Path | None = None) -> Path:
    """The folder of the model called `name`: DEMO_NAME is the bundled demo model (in `demo_folder`,
    by default DEMO_FOLDER), anything else a path.

    Raises ModelFolderError when the demo model is asked for but not installed. Whether another folder
    is a usable model is checked when it is read (model_format.read_config)."""
    if os.fspath(name) == DEMO_NAME:
        demo_folder = demo_folder or DEMO_FOLDER
        if not demo_available(demo_folder):
            raise ModelFolderError(
                f"the bundled demo model is not installed: expected {demo_folder / MODEL_JSON}; "
                "pass a converted model folder instead"
            )
        return demo_folder
    return Path(name).expanduser()
