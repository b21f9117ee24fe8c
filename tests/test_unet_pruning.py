"""Block removal (BK-SDM): which teacher blocks a pruned UNet keeps, that they load unchanged, and
the distillation trainer's smaller student (``student_res_blocks``, ``student_init``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from latent_diffusion.pipelines import TextToImage, load_components, save_components
from latent_diffusion.training.distill import DistillTrainer
from latent_diffusion.unet import UNet, UNetConfig
from latent_diffusion.unet.pruning import prune_res_blocks

from test_distill import make_config, workspace  # noqa: F401  (the fixture)
from test_text_to_image import tiny_components

CONFIG = UNetConfig(in_channels=4, out_channels=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=2,
                    attention_levels=(1,), num_heads=2, context_dim=8, norm_groups=4)


def _blocks(state: dict[str, torch.Tensor], group: str, index: int) -> dict[str, torch.Tensor]:
    prefix = f"{group}.{index}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_keeps_the_first_blocks_down_and_the_first_and_last_up() -> None:
    torch.manual_seed(0)
    teacher = UNet(CONFIG).state_dict()
    config, state = prune_res_blocks(CONFIG, teacher, 1)
    assert config == CONFIG.replace(num_res_blocks=1)
    UNet(config).load_state_dict(state, strict=True)  # every kept block fits as it is
    # Written out for (1, 2) x 2 blocks: input_blocks = conv, L0 b0, L0 b1, down, L1 b0, L1 b1;
    # output_blocks = L1 b0, b1, b2 (+ upsampling), L0 b0, b1, b2.
    for group, kept in (("input_blocks", [0, 1, 3, 4]), ("output_blocks", [0, 2, 3, 5])):
        for new, old in enumerate(kept):
            ours, theirs = _blocks(state, group, new), _blocks(teacher, group, old)
            assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in ours)
        assert not _blocks(state, group, len(kept))
    rest = [k for k in teacher if not k.startswith(("input_blocks.", "output_blocks."))]
    assert all(state[k] is teacher[k] for k in rest)  # stem, time embedding, middle block, head


def test_pruning_composes_and_leaves_an_equal_count_alone() -> None:
    wide = CONFIG.replace(num_res_blocks=3)
    teacher = UNet(wide).state_dict()
    direct = prune_res_blocks(wide, teacher, 1)
    two_steps = prune_res_blocks(*prune_res_blocks(wide, teacher, 2), 1)
    assert direct[0] == two_steps[0] and direct[1].keys() == two_steps[1].keys()
    assert all(direct[1][k] is two_steps[1][k] for k in direct[1])
    same = prune_res_blocks(wide, teacher, 3)
    assert same[0] == wide and same[1].keys() == teacher.keys()
    for bad in (0, 4, 1.0, True):
        with pytest.raises(ValueError, match=r"integer in \[1, 3\]"):
            prune_res_blocks(wide, teacher, bad)


def _wide_teacher(root: Path) -> Path:
    """The workspace's tiny teacher with two residual blocks per level (random weights)."""
    folder = root / "teacher-wide"
    if not folder.is_dir():
        components = tiny_components()
        torch.manual_seed(1)
        unet = UNet(components.unet.config.replace(num_res_blocks=2))
        save_components(dataclasses.replace(components, unet=unet), folder)
    return folder


def test_a_pruned_student_trains_and_samples(workspace: Path) -> None:  # noqa: F811
    teacher = _wide_teacher(workspace)
    config = dataclasses.replace(make_config(workspace, "pruned", steps=4), teacher=str(teacher),
                                 student_res_blocks=1)
    trainer = DistillTrainer(config)
    assert trainer.student.config.num_res_blocks == 1
    # It starts as the teacher's blocks that it keeps (and a zero guidance projection).
    expected = prune_res_blocks(trainer.teacher.unet.config, trainer.teacher.unet.state_dict(), 1)[1]
    start = trainer.student.state_dict()
    assert all(torch.equal(start[k], expected[k]) for k in expected) and not start["time_cond_proj.weight"].any()
    final = trainer.train()
    assert load_components(final).unet.config.num_res_blocks == 1
    result = TextToImage.from_pretrained(final)("a red square", seed=0, progress=False)
    assert result.metadata[0].steps == 4

    # An earlier distillation of the same teacher can seed the next one, pruned again or not.
    again = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=str(workspace / "pruned-2")),
                                student_init=str(final), student_res_blocks=None)
    seeded = DistillTrainer(again)
    init = load_components(final).unet.state_dict()
    assert all(torch.equal(v, init[k]) for k, v in seeded.student.state_dict().items())


def test_what_student_options_refuse(workspace: Path) -> None:  # noqa: F811
    teacher = _wide_teacher(workspace)
    config = dataclasses.replace(make_config(workspace, "refused", steps=2), teacher=str(teacher))
    with pytest.raises(ValueError, match=r"integer in \[1, 2\]"):
        DistillTrainer(dataclasses.replace(config, student_res_blocks=3))
    with pytest.raises(ValueError, match="not a consistency model of the teacher"):
        DistillTrainer(dataclasses.replace(config, student_init=str(teacher)))  # a teacher, not a student
    with pytest.raises(ValueError, match="student_res_blocks"):
        dataclasses.replace(config, student_res_blocks=0)
