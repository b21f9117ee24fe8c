"""Pipelines: a model folder's parts wired together for one task, in one call.

``TextToImage`` (text -> images, ``ldm generate``), ``ImageToImage`` (SDEdit, ``ldm img2img``),
``Inpaint`` (``ldm inpaint``), ``Upscale`` (``ldm upscale``); they share ``base.Pipeline``, take their
sampling arguments as one ``SamplingOptions`` (or its fields as keywords), and are listed, one name per
task, in the task table ``TASKS`` (``tasks.py``) that the command line and the server read. The model they
wire (its parts, folder I/O and reverse process) lives one layer down, in :mod:`latent_diffusion.model`;
``DiffusionComponents`` and the folder functions are re-exported here for convenience.
"""

from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.model.folder import load_components, model_hash, save_components
from latent_diffusion.pipelines.image_to_image import ImageToImage
from latent_diffusion.pipelines.inpaint import Inpaint
from latent_diffusion.pipelines.base import PlannedCall
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.pipelines.png import GenerationMetadata, read_generation_metadata, write_png
from latent_diffusion.pipelines.text_to_image import (
    GenerationResult,
    TextToImage,
    default_model_folder,
)
from latent_diffusion.pipelines.tasks import TASKS, Task
from latent_diffusion.pipelines.upscale import Upscale

__all__ = [
    "DiffusionComponents",
    "GenerationMetadata",
    "GenerationResult",
    "ImageToImage",
    "Inpaint",
    "PlannedCall",
    "SamplingOptions",
    "TASKS",
    "Task",
    "TextToImage",
    "Upscale",
    "default_model_folder",
    "load_components",
    "model_hash",
    "read_generation_metadata",
    "save_components",
    "write_png",
]
