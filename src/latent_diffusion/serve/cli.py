"""``ldm serve``: the web page and HTTP API on this machine.

    ldm serve --model runs/emoji-diffusion/final              # http://127.0.0.1:7860
    ldm serve --upscaler models/emoji-sr-x4 --port 8000 --max-waiting 4   # with the shipped upscaler

Binds to loopback by default: the server has no authentication, so exposing it (``--host
0.0.0.0``) lets anyone on the network use this machine's CPU; it says so when asked to.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from latent_diffusion.cli import UsageError
from latent_diffusion.pipelines.base import DEFAULT_MODEL_NAME
from latent_diffusion.pipelines.cli import add_backend_argument, add_decoder_argument, add_precision_argument


def register(subparsers: Any) -> None:
    """Add ``ldm serve`` to the ``ldm`` parser."""
    parser = subparsers.add_parser("serve", help="serve a web page and an HTTP API for generation",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="Besides the limits above, every request's memory is estimated from the model "
                                          "before it is queued and refused (413/422) above the budget: 3/4 of this "
                                          "machine's memory, or LDM_MEMORY_BUDGET_GB. GET /api/info reports the "
                                          "budget, the largest image side it allows (max_image_side) and the limits.")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help=f"model folder (default: the shipped models/{DEFAULT_MODEL_NAME})")
    parser.add_argument("--upscaler", type=Path, default=None, metavar="PATH",
                        help="upscaling model folder (e.g. the shipped models/emoji-sr-x4); turns on the "
                             "upscale tab and /api/upscale")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    add_precision_argument(parser)
    add_backend_argument(parser)
    add_decoder_argument(parser)
    parser.add_argument("--concurrency", type=int, default=1, help="jobs generating at once (default 1)")
    parser.add_argument("--max-waiting", type=int, default=16,
                        help="jobs allowed to wait; more are answered 429 (default 16)")
    parser.add_argument("--max-steps", type=int, default=150, help="most denoising steps per request (default 150)")
    parser.add_argument("--max-images", type=int, default=8, help="most images per request (default 8)")
    parser.add_argument("--max-upload-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    parser.add_argument("--max-run-seconds", type=float, default=600.0,
                        help="a job running longer is stopped (default 600)")
    parser.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~latent_diffusion.serve.app.ServeSettings` the options ask for (UsageError if bad)."""
    from latent_diffusion.serve.app import ServeSettings
    from latent_diffusion.serve.schemas import MAX_IMAGES, MAX_STEPS
    from latent_diffusion.serve.service import Limits

    checks = [("--port", args.port, 0, 65535), ("--concurrency", args.concurrency, 1, 64),
              ("--max-waiting", args.max_waiting, 0, 10_000), ("--max-steps", args.max_steps, 1, MAX_STEPS),
              ("--max-images", args.max_images, 1, MAX_IMAGES)]
    for flag, value, low, high in checks:
        if not low <= value <= high:
            raise UsageError(f"{flag} {value} must be in [{low}, {high}]")
    if not args.max_upload_mb > 0 or not args.max_run_seconds > 0:
        raise UsageError("--max-upload-mb and --max-run-seconds must be > 0")
    return ServeSettings(concurrency=args.concurrency, max_waiting=args.max_waiting,
                         max_run_seconds=args.max_run_seconds, max_body_bytes=int(args.max_upload_mb * 2**20),
                         limits=Limits(max_steps=args.max_steps, max_images=args.max_images))


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Load the model(s), then serve until interrupted."""
    settings = settings_from_args(args)
    try:
        import uvicorn

        from latent_diffusion.serve.app import create_app
        from latent_diffusion.serve.service import Generator
    except ImportError as err:  # a --no-deps install: say what is missing rather than a traceback
        raise UsageError(f"ldm serve needs {err.name}: pip install -c constraints-cpu.txt -e .") from err
    from latent_diffusion.pipelines.cli import load_pipeline
    from latent_diffusion.pipelines.text_to_image import TextToImage

    # One-line errors for a bad folder or a backend that is not installed.
    text = load_pipeline(args.model, args.device, TextToImage, args.precision, args.backend, args.decoder)
    upscaler = None
    if args.upscaler is not None:
        from latent_diffusion.pipelines.upscale import Upscale

        if not args.upscaler.is_dir():
            raise UsageError(f"--upscaler {str(args.upscaler)!r} is not a folder; pass an upscaling model folder")
        upscaler = load_pipeline(args.upscaler, args.device, Upscale, args.precision, args.backend)
    generator = Generator.from_components(text, upscaler)
    if not is_loopback(args.host):
        print(f"ldm serve: warning: binding {args.host} exposes the server (no authentication) to the network",
              file=sys.stderr)
    print(f"ldm serve: http://{args.host}:{args.port}  (API schema: /openapi.json; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(generator, settings), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=5)
    return 0


__all__ = ["is_loopback", "register", "run_serve", "settings_from_args"]
