"""fp32 against bf16 autocast on one model: seconds per image and how far the images drift.

Same prompts (the README grid's), seeds and default settings in both precisions. Calls alternate
fp32, bf16, fp32, ... (``--repeats`` rounds after one warm-up of each) so that a noisy neighbour
slows both alike; medians are printed with their ratio. Drift: mean and largest absolute
difference in grey levels between the two precisions' images, and the share of 8-bit values that
differ at all. The CPU line says whether the machine has bf16 matrix units: without them bf16 is
expected to be slower, and ``--precision auto`` keeps fp32 there.

    python benchmarks/precision.py                        # the shipped default model
    python benchmarks/precision.py --model models/emoji-32 --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from latent_diffusion.hardware import describe_cpu
from latent_diffusion.pipelines import TextToImage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from readme_grid import PROMPTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    pipes = {p: TextToImage.from_pretrained(args.model, precision=p) for p in ("fp32", "bf16")}
    prompts = list(PROMPTS)

    def run(precision: str, seed: int) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        images = pipes[precision](prompts, seed=seed, steps=args.steps, progress=False)
        return time.perf_counter() - start, np.stack([np.asarray(image, np.int16) for image in images])

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in times:
        run(precision, args.seeds[0])  # warm-up
    for _ in range(args.repeats):
        for precision in times:
            times[precision].append(run(precision, args.seeds[0])[0] / len(prompts))
    diffs = [np.abs(run("fp32", seed)[1] - run("bf16", seed)[1]) for seed in args.seeds]
    drift = np.concatenate([d.ravel() for d in diffs])
    print(describe_cpu())
    print(f"model {args.model or 'default'}, {len(prompts)} prompts, {args.steps} steps, batch of {len(prompts)}")
    fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
    print(f"{'precision':<10s}{'s/image':>10s}{'vs fp32':>10s}")
    print(f"{'fp32':<10s}{fp32:10.3f}{1.0:10.2f}\n{'bf16':<10s}{bf16:10.3f}{bf16 / fp32:10.2f}")
    print(f"drift bf16 vs fp32 over seeds {args.seeds}: mean {drift.mean():.2f}, max {drift.max()} grey levels; "
          f"{(drift > 0).mean():.1%} of values differ")


if __name__ == "__main__":
    main()
