"""The fuzz pass: the HTTP API fed bodies drawn from its own OpenAPI schema (valid ones and arbitrary
JSON), and ``ldm generate`` fed arbitrary arguments. Neither may ever answer with a 500, a
traceback or a crash: a bad input is a 4xx / exit 2 with one line, a good one is an image.

Bodies come from the schema by a small translation of its JSON schema into hypothesis strategies
(:func:`from_schema`; schemathesis and hypothesis-jsonschema do the same at more cost). Bounded: a
tiny model, a server capped at 30 steps (the default 25 fits) and 2 images, a fixed number of examples per
property, derandomized so CI sees the same cases every run (the seed of hypothesis' database is
not used: ``database=None``).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from latent_diffusion import cli  # noqa: E402
from latent_diffusion.pipelines import save_components  # noqa: E402
from latent_diffusion.serve import Limits, ServeSettings, create_app  # noqa: E402
from test_serve_api import tiny_generator  # noqa: E402
from test_text_to_image import tiny_components  # noqa: E402

BOUNDED = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TASKS = ("txt2img", "img2img", "inpaint", "upscale")


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RNG = np.random.default_rng(0)
# What an image field may hold: a fitting picture, an upscaler-sized one, a wrong size, a mask, junk.
IMAGES = [png_b64(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
          png_b64(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)),
          png_b64(RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)),
          png_b64(np.where(RNG.random((16, 16)) > 0.5, 255, 0).astype(np.uint8)),
          png_b64(RNG.integers(0, 256, (16, 16), dtype=np.uint8)),  # grey, not binary: a bad mask
          "", "not base64!", base64.b64encode(b"GIF89a not really").decode(), "data:image/png,abc"]


@pytest.fixture(scope="module")
def client():
    settings_ = ServeSettings(max_waiting=4, max_body_bytes=2**20,
                              limits=Limits(max_steps=30, max_images=2, max_input_side=64))
    with TestClient(create_app(tiny_generator(), settings_), raise_server_exceptions=False) as client:
        yield client


def inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    """The schema with every ``$ref`` into ``#/components/schemas`` replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline_refs(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
        return {k: inline_refs(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [inline_refs(v, definitions) for v in node]
    return node


@pytest.fixture(scope="module")
def request_schemas(client: TestClient) -> dict[str, dict]:
    schema = client.get("/openapi.json").json()
    definitions = schema["components"]["schemas"]
    bodies = {}
    for task in TASKS:
        body = schema["paths"][f"/api/{task}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        bodies[task] = inline_refs(body, definitions)
    return bodies


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid under a (refs-inlined) pydantic JSON schema: objects, anyOf, enums, bounded
    numbers and strings, null. Only what the request models use; anything else is an error."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: from_schema(v) for k, v in properties.items() if k in required},
                                     optional={k: from_schema(v) for k, v in properties.items() if k not in required})
    if kind == "string":
        return st.text(max_size=min(schema.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(schema.get("minimum", schema.get("exclusiveMinimum", -2**40 - 1) + 1),
                           schema.get("maximum", schema.get("exclusiveMaximum", 2**40 + 1) - 1))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise AssertionError(f"the fuzz pass does not know this schema: {schema}")


def check_answer(response: Any, body: Any, seen: list[int] | None = None) -> None:
    if seen is not None:
        seen.append(response.status_code)
    assert response.status_code < 500, (response.status_code, response.text[:500], repr(body)[:500])
    if response.status_code >= 400:
        detail = response.json()
        text = str(detail)
        assert "Traceback" not in text and "object at 0x" not in text, text[:500]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                      children, max_size=4),
                    max_leaves=12)


@pytest.mark.parametrize("task", TASKS)
def test_the_api_never_fails_on_bodies_drawn_from_its_schema(client: TestClient, request_schemas: dict,
                                                            task: str) -> None:
    seen: list[int] = []

    @BOUNDED
    # Half the draws get the fitting picture and a binary mask (a random pair rarely fits both).
    @given(body=from_schema(request_schemas[task]),
           files=st.just((IMAGES[0], IMAGES[3])) | st.tuples(st.sampled_from(IMAGES), st.sampled_from(IMAGES)))
    def check(body: dict, files: tuple[str, str]) -> None:
        image, mask = files
        if "image" in body:
            body["image"] = image
        if "mask" in body:
            body["mask"] = mask
        check_answer(client.post(f"/api/{task}", json=body), body, seen)

    check()
    # Not vacuous: some drawn bodies made images, some were refused.
    assert 200 in seen and any(400 <= s < 500 for s in seen), sorted(set(seen))


@pytest.mark.parametrize("task", TASKS)
def test_the_api_never_fails_on_arbitrary_json(client: TestClient, task: str) -> None:
    @BOUNDED
    @given(body=JSON)
    def check(body: Any) -> None:
        check_answer(client.post(f"/api/{task}", json=body), body)

    check()


# ---- the command line -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_components(tiny_components(), tmp_path_factory.mktemp("fuzz") / "model")


NUMBERS = st.sampled_from(["-1", "0", "1", "2", "3", "16", "17", "1e3", "nan", "inf", "-inf", "1000000", "x", ""])
OPTIONS = st.lists(st.tuples(st.sampled_from(["--steps", "--guidance", "--rescale", "--seed", "--size", "-n",
                                              "--sampler", "--precision", "--device", "--negative"]),
                             NUMBERS | st.sampled_from(["euler", "lcm", "dpmpp_2m", "bf16", "auto", "fp32", "cuda",
                                                        "cpu", "mps", "foo"])),
                   max_size=4)
PROMPTS = st.text(max_size=30) | st.sampled_from(["red \udcff heart", "", "a" * 5000])


@BOUNDED
@given(options=OPTIONS, prompt=PROMPTS)
def test_ldm_generate_never_crashes_on_any_arguments(model_folder: Path, tmp_path_factory: pytest.TempPathFactory,
                                                      options: list[tuple[str, str]], prompt: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path_factory.mktemp("out")
    argv = ["generate", prompt, "--model", str(model_folder), "-o", str(out / "x.png"), "--no-progress"]
    for flag, value in options:
        argv += [flag, value]
    # Bounded work: few steps unless the draw asks otherwise (then the check must refuse or be quick).
    if "--steps" not in argv:
        argv += ["--steps", "2"]
    steps = argv[argv.index("--steps") + 1]
    try:
        count = float(steps)
    except ValueError:
        count = 0
    if math.isfinite(count) and 8 < count <= 1000:  # legal but slow for a fuzz pass: keep the case, fewer steps
        argv[argv.index("--steps") + 1] = "8"
    try:
        rc = cli.main(argv)
    except SystemExit as stop:  # argparse: a bad option value, exit 2 with its usage line
        rc = stop.code
    captured = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, captured.err[-800:])
    assert "Traceback" not in captured.err, (argv, captured.err[-800:])
    if rc == 2:  # one line that says what is wrong (argparse's usage line comes before its error line)
        assert "error:" in captured.err.strip().splitlines()[-1], captured.err[-800:]
