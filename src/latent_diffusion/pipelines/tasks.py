"""The task table: every way of calling the model, under one name each.

A task is a way of calling the same model (paper Sec. 4: text-to-image, image-to-image,
inpainting, super-resolution), never a model subclass. The name is the one the HTTP API routes
(``POST /api/<name>``), the PNG metadata records (``task``) and the server lists; the command line
keeps its verbs (``ldm generate`` is txt2img). The command line, the server and the pipelines read
from here which pipeline runs a task, which image inputs it takes in which order, and which
arguments beyond :class:`~latent_diffusion.pipelines.options.SamplingOptions` it has.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """One task: ``name`` (API route, metadata), ``command`` (``ldm`` verb), the pipeline that runs it
    (``module:Class`` under latent_diffusion.pipelines, imported when asked for), its image inputs
    in call order (before the prompt), its own arguments, the model kinds it can use
    (``DiffusionComponents.image_condition``) and a one-line summary."""

    name: str
    command: str
    pipeline_path: str
    images: tuple[str, ...]
    arguments: tuple[str, ...]
    model_kinds: tuple[str, ...]
    summary: str

    def pipeline(self) -> Any:
        """The pipeline class (imported here, so reading the table costs no torch import)."""
        module, _, name = self.pipeline_path.partition(":")
        return getattr(importlib.import_module(f"latent_diffusion.pipelines.{module}"), name)

    def arguments_of(self, source: Any) -> dict[str, Any]:
        """This task's own arguments read off ``source`` (argparse namespace or request)."""
        return {name: getattr(source, name) for name in self.arguments}


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("txt2img", "generate", "text_to_image:TextToImage", (), (), ("none",),
         "generate images from a text prompt"),
    Task("img2img", "img2img", "image_to_image:ImageToImage", ("image",), ("strength",), ("none",),
         "re-draw an image following a prompt (SDEdit)"),
    Task("inpaint", "inpaint", "inpaint:Inpaint", ("image", "mask"), ("strength", "method"),
         ("none", "masked_image"), "repaint the white region of a mask following a prompt"),
    Task("upscale", "upscale", "upscale:Upscale", ("image",), ("back_projection",), ("low_res",),
         "upscale an image with a super-resolution model"),
)}


def tasks_for(model_kind: str) -> str:
    """The tasks (with their pipelines and commands) a model of ``model_kind`` can run, for an error
    message that names where a model given to the wrong pipeline belongs."""
    found = [task for task in TASKS.values() if model_kind in task.model_kinds]
    return " / ".join(f"{task.pipeline_path.partition(':')[2]} (ldm {task.command})" for task in found)


__all__ = ["TASKS", "Task", "tasks_for"]
