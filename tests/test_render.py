"""The policy GIF (eggroll_trainer.rl.render): frames per simulated second, the camera following the agent."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from eggroll_trainer.rl.render import frame_every, save_gif

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("imageio")


@pytest.mark.parametrize("dt, every", [(0.05, 1), (0.04, 1), (0.008, 5), (0.015, 2), (0.01, 5), (0.002, 25)])
def test_gif_has_at_least_20_frames_per_simulated_second(dt: float, every: int) -> None:
    assert frame_every(dt) == every
    assert every * dt <= 0.05 + 1e-12


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="dt"):
        frame_every(0.0)
    with pytest.raises(ValueError, match="seconds"):
        save_gif(nn.Linear(17, 6), gym.make, tmp_path / "p.gif", seconds=0)


class Forward(nn.Module):
    """Full throttle on every joint of HalfCheetah (6 actions), whatever it observes."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.ones(6)


def test_a_missing_backend_says_why(tmp_path):
    make_env = functools.partial(gym.make, "HalfCheetah-v5")
    with pytest.raises(RuntimeError, match="MUJOCO_GL=no_such_backend: "):
        save_gif(Forward(), make_env, tmp_path / "p.gif", seconds=0.2, backends=["no_such_backend"])
    assert not (tmp_path / "p.gif").exists()


def test_gif_frames_and_duration(tmp_path):
    from PIL import Image

    make_env = functools.partial(gym.make, "HalfCheetah-v5")
    try:
        save_gif(Forward(), make_env, tmp_path / "p.gif", seconds=0.5, seed=0)
    except RuntimeError as err:  # no offscreen OpenGL on this machine
        pytest.skip(str(err))
    with Image.open(tmp_path / "p.gif") as image:  # dt 0.05 s: one frame per env step, 50 ms each
        assert (image.n_frames, image.info["duration"], image.size) == (10, 50, (320, 240))


def test_start_seconds_skips_the_beginning(tmp_path):
    from PIL import Image

    make_env = functools.partial(gym.make, "HalfCheetah-v5")
    try:
        save_gif(Forward(), make_env, tmp_path / "p.gif", seconds=0.25, start_seconds=0.5, seed=0)
    except RuntimeError as err:  # no offscreen OpenGL on this machine
        pytest.skip(str(err))
    with Image.open(tmp_path / "p.gif") as image:  # steps 10..14 rendered: 5 frames
        assert image.n_frames == 5


def test_an_episode_that_ends_before_start_seconds_is_a_value_error(tmp_path):
    make_env = functools.partial(gym.make, "HalfCheetah-v5", max_episode_steps=4)
    try:
        save_gif(Forward(), make_env, tmp_path / "p.gif", seconds=0.5, start_seconds=1.0)
    except RuntimeError as err:  # no offscreen OpenGL on this machine
        pytest.skip(str(err))
    except ValueError as err:  # not retried with the next backend: it would play the same episode
        assert "ended after 4 steps (0.2 s)" in str(err)
    else:
        pytest.fail("save_gif wrote a GIF of no frames")
    assert not (tmp_path / "p.gif").exists()
    with pytest.raises(ValueError, match="start_seconds"):
        save_gif(Forward(), make_env, tmp_path / "p.gif", start_seconds=-1.0)
