"""Where the library lives when the user has not chosen a folder; the rule itself lives in the
engine's mlx_sd.library so that the CLI and the server (which must not load Qt) share it."""

from mlx_sd.library import APP_NAME, default_library_folder

__all__ = ["APP_NAME", "default_library_folder"]
