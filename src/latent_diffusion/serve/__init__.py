"""``ldm serve``: a web page and an HTTP JSON API for generation, over a bounded job queue.

    from latent_diffusion.serve import Generator, ServeSettings, create_app

    app = create_app(Generator.from_pretrained("runs/emoji-diffusion/final"), ServeSettings(max_waiting=8))

``app`` is a FastAPI (ASGI) app: run it with uvicorn, or with :class:`~latent_diffusion.serve.
server.BackgroundServer` on a thread. Modules: ``jobs`` (the queue), ``schemas`` (the API's
bodies), ``service`` (requests into pipeline calls), ``app`` (routes), ``cli`` (the command).
"""

from latent_diffusion.serve.app import ServeSettings, create_app
from latent_diffusion.serve.jobs import Job, JobCancelled, JobQueue, QueueClosed, QueueFull
from latent_diffusion.serve.service import Generator, Limits, RequestError

__all__ = ["Generator", "Job", "JobCancelled", "JobQueue", "Limits", "QueueClosed", "QueueFull", "RequestError",
           "ServeSettings", "create_app"]
