"""`mlx-sd serve`: serve the AUTOMATIC1111 web UI's API (and OpenAI's images API) on this machine.

The model is loaded before the port opens, so a bad name, a bad flag or a taken port is a one-line
error at once. Binding anything but localhost needs `--api-auth USER:PASS` or an explicit `--insecure`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mlx_sd.device import PRECISIONS
from server.exposure import check_exposure, parse_auth

DEFAULT_PORT = 7860  # A1111's, so clients find it without configuration


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the A1111 web UI's API on localhost (for SillyTavern, Open WebUI, scripts)",
        description="Serve AUTOMATIC1111's /sdapi/v1 API and OpenAI's /v1/images/generations with the library's "
        "models. One generation runs at a time; the others wait in a queue.",
    )
    parser.add_argument(
        "--model", metavar="NAME",
        help="the model to load first: a name in the library, or 'demo' (default: the library's first model, else demo)",
    )
    parser.add_argument(
        "--library", type=Path, metavar="DIR",
        help="the library folder, as in the app's Settings (default: the app's default library)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--api-auth", metavar="USER:PASS", help="require HTTP Basic authentication with these credentials")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-local --host without --api-auth (anyone on the network can use it)"
    )
    parser.add_argument(
        "--cors-allow-origins", metavar="ORIGINS", default="",
        help="comma-separated origins that browsers may call the API from (default: none, CORS off)",
    )
    parser.add_argument("--no-history", action="store_true", help="do not record the images in the library's history")
    parser.add_argument(
        "--queue-size", type=int, default=16, metavar="N",
        help="jobs that may wait behind the running one; more get 503 with Retry-After (default 16)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="the CPU's products, as for generate")

    def one_line_error(message: str) -> NoReturn:
        parser.exit(2, f"mlx-sd serve: error: {message} (see mlx-sd serve --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the server stack loads only when the command runs, so `mlx-sd --help` stays fast
    from app.library_folder import default_library_folder
    from mlx_sd.device import check_precision
    from mlx_sd.model_paths import DEMO_NAME
    from server.app import ApiServer, ServerConfig, create_app, start_queue
    from server.background import bind, uvicorn_server
    from server.library import Library

    auth = parse_auth(args.api_auth)
    check_exposure(args.host, auth, args.insecure)
    check_precision(args.precision)
    if args.queue_size < 0:
        raise ValueError(f"--queue-size {args.queue_size}: expected 0 or more")
    library_folder = (args.library or default_library_folder()).expanduser()
    library = Library(library_folder)
    available = library.models()
    if args.model:
        model = library.model(args.model)
    elif available:
        model = next((m for m in available if m.name != DEMO_NAME), available[0])
    else:
        raise ValueError(f"no models in {library_folder}: convert one with `mlx-sd convert`, or pass --library")
    config = ServerConfig(
        library=library_folder, host=args.host, port=args.port, api_auth=auth,
        cors_allow_origins=tuple(o.strip() for o in args.cors_allow_origins.split(",") if o.strip()),
        max_queued=args.queue_size, record_history=not args.no_history, precision=args.precision,
    )
    sock = bind(args.host, args.port)
    with sock:
        sys.stderr.write(f"loading {model.name} from {model.folder}\n")
        queue = start_queue(config, model)
        try:
            port = sock.getsockname()[1]
            sys.stderr.write(f"serving the A1111 API on http://{args.host}:{port}/sdapi/v1 (Ctrl-C stops)\n")
            sys.stderr.flush()
            app = create_app(ApiServer(config, queue, model, library))
            uvicorn_server(app).run(sockets=[sock])
        finally:
            queue.close(timeout=5)
    return 0
