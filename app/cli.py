"""The `trainboard` console command: `train` and `models` from ml/, `serve`, and `runs` (trainboard.cli)."""

from __future__ import annotations

import argparse

from ml.cli import add_commands
from trainboard.cli import add_runs_command


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the dashboard and one training worker (embedded mode)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--no-worker", action="store_true",
                       help="web app only; run workers yourself with `celery -A worker.celery_app worker`")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="embedded workers, each supervised (default 1): worker i trains on GPU i; "
                            "on the CPU they share the cores")
    serve.set_defaults(func=cmd_serve)


def _positive_int(text: str) -> int:
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 64 (got {text!r})")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: `trainboard train` must not need the web stack.
    from app.embedded import serve

    return serve(args.host, args.port, with_worker=not args.no_worker, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainboard", description="Launch and inspect CIFAR-10 trainings.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    add_serve_command(sub)
    add_runs_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
