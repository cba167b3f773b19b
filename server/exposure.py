"""Who may reach the server: localhost by default; another address only with HTTP Basic credentials
or an explicit opt-out. Light to import, so the CLI checks its flags before loading the server stack."""

from __future__ import annotations

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`USER:PASS` -> (user, password); None stays None."""
    if value is None:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise ValueError(f"--api-auth {value!r}: expected USER:PASS, both non-empty")
    return user, password


def check_exposure(host: str, auth: tuple[str, str] | None, insecure: bool) -> None:
    """Raises ValueError for a non-local `host` without credentials unless `insecure`."""
    if host not in LOCAL_HOSTS and auth is None and not insecure:
        raise ValueError(
            f"--host {host} makes the API reachable from other machines; add --api-auth USER:PASS, "
            "or --insecure to serve without a password"
        )
