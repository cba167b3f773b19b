"""The README opens with the two commands, CI runs the second verbatim, and every command is documented."""

import re
from pathlib import Path

from cli.main import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def opening_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", README)[:2]


def test_readme_opens_with_setup_and_test_commands():
    setup, tests = opening_commands()
    assert "mlx-sd generate --model demo" in setup
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = opening_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci


def test_every_user_facing_command_is_documented():
    for name in SUBCOMMANDS:
        assert f"mlx-sd {name}" in README, f"`mlx-sd {name}` is not in the README"
    for command in ("mlx-sd-app", "mlx-sd-app --install-desktop-entry", "python -m benchmarks.run",
                    "python -m benchmarks.history",
                    "python -m training.train_demo", "python -m training.evaluate_demo"):
        assert command in README, f"`{command}` is not in the README"
