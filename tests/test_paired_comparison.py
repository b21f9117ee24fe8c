"""Paired comparison of two evaluations (evaluation/paired.py, scripts/compare_evals.py)."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest

from script_loading import load_script

from latent_diffusion.evaluation.paired import paired_hits

COMPARE = load_script("compare_evals")


def ranks_for(hits: list[bool]) -> list[int]:
    """Rank 1 for a hit, 50 for a miss (outside any top-k used here)."""
    return [1 if hit else 50 for hit in hits]


def test_mcnemar_p_value_is_the_exact_binomial_tail_of_the_discordant_prompts() -> None:
    # 30 prompts both get, 50 both miss, 1 only A gets, 9 only B gets.
    a = ranks_for([True] * 30 + [False] * 50 + [True] + [False] * 9)
    b = ranks_for([True] * 30 + [False] * 50 + [False] + [True] * 9)
    result = paired_hits(a, b, k=5)
    assert (result["only_a"], result["only_b"], result["n"]) == (1, 9, 90)
    assert result["rate_a"] == pytest.approx(31 / 90) and result["rate_b"] == pytest.approx(39 / 90)
    assert result["difference"] == pytest.approx(8 / 90)
    # two-sided: twice P(X <= 1) for X ~ Binomial(10, 1/2)
    assert result["p_value"] == pytest.approx(2 * (comb(10, 0) + comb(10, 1)) / 2**10)
    low, high = result["interval"]
    assert low < result["difference"] < high and low > 0  # all discordant prompts but one favour B
    swapped = paired_hits(b, a, k=5)
    assert swapped["difference"] == pytest.approx(-result["difference"])
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_k_decides_what_a_hit_is_and_agreement_gives_no_evidence() -> None:
    a, b = [1, 3, 6, 9], [2, 6, 3, 9]
    assert paired_hits(a, b, k=5)["only_a"] == 1 and paired_hits(a, b, k=5)["only_b"] == 1
    same = paired_hits(a, a, k=1)
    assert same["p_value"] == 1.0 and same["interval"] == [0.0, 0.0] and same["difference"] == 0.0
    everything = paired_hits([9] * 20, [1] * 20, k=5)
    assert everything["interval"] == [1.0, 1.0]
    assert everything["p_value"] == pytest.approx(2 / 2**20)


def test_the_bootstrap_is_seeded() -> None:
    a = ranks_for([i % 3 == 0 for i in range(60)])
    b = ranks_for([i % 2 == 0 for i in range(60)])
    assert paired_hits(a, b) == paired_hits(a, b)
    assert paired_hits(a, b, seed=1)["interval"] != paired_hits(a, b, seed=0)["interval"]


@pytest.mark.parametrize("a, b, message", [
    ([1, 2], [1], "the same length"),
    ([], [], "non-empty"),
    ([0, 2], [1, 2], "1-based"),
])
def test_bad_ranks_are_refused(a: list[int], b: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_hits(a, b)


def eval_json(path: Path, training: list[int], heldout: list[int], *, seed: int = 0, style: list[bool] | None = None,
              with_ranks: bool = True) -> Path:
    """A minimal ``ldm eval`` result with per-prompt ranks."""
    def items(ranks: list[int]) -> dict:
        section = {"top5": sum(r <= 5 for r in ranks) / len(ranks), "n": len(ranks), "examples": ["cat face"]}
        return section | ({"ranks": ranks} if with_ranks else {})

    metrics = {"adherence": {"training_prompts": items(training), "heldout_prompts": items(heldout)}}
    if style is not None:
        metrics["composition"] = {"heldout_pairs": items([1] * len(style)) | {"style_right": style}}
    settings = {"data": "emoji-styles", "data_path": None, "split": "train", "adherence_prompts": len(training),
                "seed": seed, "styles": None, "skin_tones": True, "sampler": "dpmpp_2m", "steps": 25, "guidance": 5.0}
    path.write_text(json.dumps({"format": "latent-diffusion-eval", "model": {"hash": path.stem, "training_steps": 1},
                                "settings": settings, "metrics": metrics}))
    return path


def test_the_script_prints_and_writes_one_row_per_shared_figure(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a = eval_json(tmp_path / "a.json", [1, 9, 9, 9], [1, 1, 9, 9], style=[True, False])
    b = eval_json(tmp_path / "b.json", [1, 1, 1, 9], [1, 9, 9, 9], style=[True, True])
    COMPARE.main([str(a), str(b), "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "adherence.training_prompts" in out and "composition.heldout_pairs" in out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    figures = [(r["items"], r["figure"]) for r in rows]
    assert figures == [("training_prompts", "top-1"), ("training_prompts", "top-5"), ("heldout_prompts", "top-1"),
                       ("heldout_prompts", "top-5"), ("heldout_pairs", "concept top-5"),
                       ("heldout_pairs", "asked style")]
    top5 = rows[1]
    assert (top5["rate_a"], top5["rate_b"], top5["only_a"], top5["only_b"]) == (0.25, 0.75, 0, 2)
    style = rows[5]
    assert (style["rate_a"], style["rate_b"], style["only_b"]) == (0.5, 1.0, 1)


def test_the_script_refuses_results_that_scored_other_prompts(tmp_path: Path) -> None:
    a = eval_json(tmp_path / "a.json", [1, 9], [1, 9])
    with pytest.raises(SystemExit, match="differ in seed"):
        COMPARE.main([str(a), str(eval_json(tmp_path / "b.json", [1, 9], [1, 9], seed=3))])
    with pytest.raises(SystemExit, match="differ in adherence_prompts"):
        COMPARE.main([str(a), str(eval_json(tmp_path / "c.json", [1, 9, 9], [1, 9, 9]))])
    with pytest.raises(SystemExit, match="holds no per-item 'ranks'.*evaluate it again"):
        COMPARE.main([str(a), str(eval_json(tmp_path / "d.json", [1, 9], [1, 9], with_ranks=False))])
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(SystemExit, match="not an ldm eval result"):
        COMPARE.main([str(a), str(tmp_path / "e.json")])
