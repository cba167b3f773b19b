"""The engine's dependencies point one way: no module of mlx_sd imports the app, the converter, the
server, the CLI or Qt, not even inside a function (which an import-time check cannot see)."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "mlx_sd"
FORBIDDEN = {"app", "convert", "server", "cli", "PySide6"}


def imported_packages(source: str) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def test_the_check_sees_imports_inside_functions():
    assert imported_packages("def f():\n    from convert.ldm_unet import unet_key\n") == {"convert"}


def test_no_engine_module_imports_app_convert_server_cli_or_qt():
    found = {
        str(path.relative_to(ENGINE.parent)): sorted(imported_packages(path.read_text()) & FORBIDDEN)
        for path in sorted(ENGINE.rglob("*.py"))
    }
    assert {path: names for path, names in found.items() if names} == {}
