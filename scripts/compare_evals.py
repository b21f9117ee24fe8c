"""Compare two ``ldm eval`` results prompt by prompt: is model B's adherence really better than A's?

Two evaluations of emoji text-to-image models with the same prompt sets (the same ``--data``,
``--split``, ``--adherence-prompts``, ``--seed`` and styles) score the same prompts, so their
difference is read on the prompts one model gets and the other misses
(``latent_diffusion.evaluation.paired``): an exact McNemar p-value and a paired bootstrap 95%
interval per figure, for adherence (training wordings, held-out rewordings; top-1 and top-5) and,
where both results have it, composition (held-out and seen pairs: concept top-5 and the asked style).
Sampler, steps and guidance may differ between the two: they are what such a comparison is for.

    python scripts/compare_evals.py docs/eval/emoji-styles-samples.json NEW.json [--json OUT]

Results written before per-prompt ranks were recorded (2026-12-08) cannot be compared this way;
evaluate again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latent_diffusion.evaluation.paired import paired_hits

# Settings that decide which prompts are drawn and with which noise: they must agree.
SAME_PROMPTS = ("data", "data_path", "split", "adherence_prompts", "seed", "styles", "skin_tones")
SHOWN = ("sampler", "steps", "guidance", "spacing")
FIGURES = (  # (group, item set, figure, key of the per-item record, k)
    ("adherence", "training_prompts", "top-1", "ranks", 1),
    ("adherence", "training_prompts", "top-5", "ranks", 5),
    ("adherence", "heldout_prompts", "top-1", "ranks", 1),
    ("adherence", "heldout_prompts", "top-5", "ranks", 5),
    ("composition", "heldout_pairs", "concept top-5", "ranks", 5),
    ("composition", "heldout_pairs", "asked style", "style_right", 1),
    ("composition", "seen_pairs", "concept top-5", "ranks", 5),
    ("composition", "seen_pairs", "asked style", "style_right", 1),
)


def load(path: str) -> dict[str, Any]:
    """One ``ldm eval`` JSON, refused by name if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: cannot read an ldm eval result ({err})") from err
    if not isinstance(data, dict) or data.get("format") != "latent-diffusion-eval":
        raise SystemExit(f"{path}: not an ldm eval result (no 'format': 'latent-diffusion-eval')")
    return data


def check_same_prompts(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> None:
    """Refuse two results whose prompt sets or noise differ, naming the setting."""
    for key in SAME_PROMPTS:
        if a["settings"].get(key) != b["settings"].get(key):
            raise SystemExit(f"{names[0]} and {names[1]} differ in {key} ({a['settings'].get(key)!r} vs "
                             f"{b['settings'].get(key)!r}): they scored different prompts, so a paired comparison "
                             "means nothing; evaluate both with the same settings")


def records(result: dict[str, Any], group: str, items: str, key: str, path: str) -> list[int] | None:
    """Per-item ranks (or style hits as ranks 1 / 2) of one item set; None if the group was not run."""
    section = result["metrics"].get(group, {}).get(items)
    if section is None:
        return None
    if key not in section:
        raise SystemExit(f"{path}: {group}.{items} holds no per-item '{key}' (written before ldm eval recorded "
                         "them); evaluate it again")
    values = section[key]
    return [1 if v else 2 for v in values] if key == "style_right" else list(values)


def compare(a: dict[str, Any], b: dict[str, Any], paths: tuple[str, str]) -> list[dict[str, Any]]:
    """One row per figure present in both results."""
    rows = []
    for group, items, figure, key, k in FIGURES:
        ranks_a, ranks_b = records(a, group, items, key, paths[0]), records(b, group, items, key, paths[1])
        if ranks_a is None or ranks_b is None:
            continue
        examples = (a["metrics"][group][items].get("examples"), b["metrics"][group][items].get("examples"))
        if len(ranks_a) != len(ranks_b) or examples[0] != examples[1]:
            raise SystemExit(f"{group}.{items}: the two results scored different prompts ({len(ranks_a)} vs "
                             f"{len(ranks_b)}, first {examples[0]!r} vs {examples[1]!r})")
        rows.append({"group": group, "items": items, "figure": figure} | paired_hits(ranks_a, ranks_b, k))
    if not rows:
        raise SystemExit("the two results share no adherence or composition figures to compare")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the paired comparison table (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the baseline's ldm eval JSON")
    parser.add_argument("b", help="the candidate's ldm eval JSON")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    a, b = load(args.a), load(args.b)
    check_same_prompts(a, b, (args.a, args.b))
    rows = compare(a, b, (args.a, args.b))
    for label, result, path in (("A", a, args.a), ("B", b, args.b)):
        shown = ", ".join(f"{key} {result['settings'].get(key)}" for key in SHOWN)
        print(f"{label}: {path} (model {result['model'].get('hash')}, {result['model'].get('training_steps')} steps; "
              f"{shown})")
    print(f"\n{'items':<28} {'figure':<14} {'n':>4} {'A':>6} {'B':>6} {'B - A':>7} {'95% interval':>17} "
          f"{'only A':>7} {'only B':>7} {'p':>7}")
    for row in rows:
        low, high = row["interval"]
        print(f"{row['group'] + '.' + row['items']:<28} {row['figure']:<14} {row['n']:>4} {row['rate_a']:>6.1%} "
              f"{row['rate_b']:>6.1%} {row['difference']:>+7.1%} {f'[{low:+.1%}, {high:+.1%}]':>17} "
              f"{row['only_a']:>7} {row['only_b']:>7} {row['p_value']:>7.3f}")
    print("\np: exact two-sided McNemar test on the prompts only one model gets; interval: paired bootstrap "
          "(10,000 resamples of the prompts)")
    if args.json:
        Path(args.json).write_text(json.dumps({"a": args.a, "b": args.b, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
