"""The task table, the sampling-options object and planned calls: what the command line, the
server and the pipelines share (one name per task, each argument checked in one place)."""

from __future__ import annotations

import argparse
import inspect

import numpy as np
import pytest
from test_text_to_image import tiny_components

from latent_diffusion.pipelines import TASKS, SamplingOptions, TextToImage, cli
from latent_diffusion.pipelines.base import Pipeline
from latent_diffusion.pipelines.image_to_image import ImageToImage
from latent_diffusion.serve.schemas import REQUESTS


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_is_one_pipeline_one_command_one_request(name: str) -> None:
    task = TASKS[name]
    pipeline = task.pipeline()
    assert issubclass(pipeline, Pipeline)
    # The plan takes the task's images in the table's order, then the prompt, the options and the
    # task's own arguments: what the CLI and the server pass it by reading the table.
    params = list(inspect.signature(pipeline.plan).parameters)[1:]
    assert params[:len(task.images) + 2] == [*task.images, "prompt", "options"]
    assert set(task.arguments) <= set(params)
    request = REQUESTS[name].model_fields
    assert set(task.images) | set(task.arguments) | {"prompt"} <= set(request)
    assert set(SamplingOptions.names()) - {"size"} <= set(request)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    given = {"txt2img": [], "upscale": ["x"]}.get(name, [f"--{n}=x" for n in task.images])
    args = parser.parse_args([task.command, *given])
    assert args.task == name and args.func.__name__ == "run_task"
    for argument in task.images + task.arguments:
        assert hasattr(args, argument)


def test_options_are_checked_when_made_and_unknown_keywords_named() -> None:
    with pytest.raises(ValueError, match="steps=0 must be an integer >= 1"):
        SamplingOptions(steps=0)
    with pytest.raises(ValueError, match=r"sampler='plms'.*dpmpp_2m"):
        SamplingOptions(sampler="plms")
    with pytest.raises(TypeError, match="unknown sampling argument.*stepz.*the sampling arguments are num_images"):
        SamplingOptions.merge(None, stepz=3)
    base = SamplingOptions(seed=4, steps=3)
    assert SamplingOptions.merge(base, steps=5) == SamplingOptions(seed=4, steps=5)
    with pytest.raises(ValueError, match="guidance=-1"):
        SamplingOptions.merge(base, guidance=-1.0)


def test_resolve_fills_the_model_defaults_and_checks_against_the_model() -> None:
    pipe = TextToImage(tiny_components())
    resolved = pipe.resolve(SamplingOptions(steps=7))
    assert (resolved.steps, resolved.sampler, resolved.guidance) == (7, "dpmpp_2m", 5.0)
    with pytest.raises(ValueError, match=r"steps=1001 must be an integer in \[1, 1000\]"):
        pipe.resolve(SamplingOptions(steps=1001))


def test_a_plan_is_checked_before_any_work_and_runs_as_the_call_does() -> None:
    pipe = TextToImage(tiny_components())
    with pytest.raises(ValueError, match="negative_prompt has 2 entries"):
        pipe.plan("a cat", SamplingOptions(negative_prompt=["a", "b"]))
    call = pipe.plan(["a cat", "a dog"], SamplingOptions(num_images=2, steps=4, seed=9))
    assert call.total_steps == 4 and len(call.batch) == 4
    steps: list[int] = []
    planned = call.run(callback=lambda info: steps.append(int(info["i"])), progress=False)
    assert steps == [0, 1, 2, 3]
    direct = pipe(["a cat", "a dog"], num_images=2, steps=4, seed=9, progress=False)
    for a, b in zip(planned.images, direct.images):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Keywords override the options object.
    again = pipe(["a cat", "a dog"], SamplingOptions(num_images=2, steps=4, seed=1), seed=9, progress=False)
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(direct.images[0]))


def test_image_task_plans_count_only_the_strengths_share_of_the_steps() -> None:
    from PIL import Image

    pipe = ImageToImage(tiny_components())
    picture = Image.new("RGB", (16, 16), (200, 30, 30))
    assert pipe.plan(picture, "x", SamplingOptions(steps=10), strength=0.5).total_steps == 5
    assert pipe.plan(picture, "x", SamplingOptions(steps=10), strength=0.0).total_steps == 0
    with pytest.raises(ValueError, match=r"strength=1.5 must lie in \[0.0, 1.0\]"):
        pipe.plan(picture, "x", strength=1.5)


def test_unguided_calls_encode_no_unconditional_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = TextToImage(tiny_components())
    conditioner = pipe.components.conditioner
    encoded: list[list[str]] = []
    forward = conditioner.forward

    def counting(prompts=None, **kwargs):
        encoded.append(list(prompts))
        return forward(prompts=prompts, **kwargs)

    monkeypatch.setattr(conditioner, "forward", counting)
    guided = pipe("a cat", steps=2, guidance=3.0, progress=False)
    assert encoded == [["a cat"], [""]]
    encoded.clear()
    plain = pipe("a cat", steps=2, guidance=1.0, progress=False)
    assert encoded == [["a cat"]]
    assert not np.array_equal(np.asarray(guided.images[0]), np.asarray(plain.images[0]))
