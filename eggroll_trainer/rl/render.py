"""A GIF of one episode of a gymnasium MuJoCo policy, rendered offscreen, the camera following the agent.

MuJoCo picks its OpenGL backend (``MUJOCO_GL``: ``egl``, ``osmesa``, ``glfw``) once per process, when it first
renders, and a broken GL driver may crash the process loading it. So each backend is tried in a child process,
and training (which needs no OpenGL: run it with ``MUJOCO_GL=disable``) is never at risk.

    save_gif(deployed, make_env, "policy.gif", seconds=10.0)  # deployed: raw observation in, action out
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["frame_every", "save_gif"]


def frame_every(dt: float) -> int:
    """Env steps per GIF frame for an env step of ``dt`` simulated seconds: at least 20 frames per simulated
    second (``every · dt ≤ 0.05``), on the GIF format's 10 ms grid of frame durations where possible."""
    if dt <= 0:
        raise ValueError(f"Invalid dt: {dt}")
    most = max(1, math.floor(0.05 / dt + 1e-9))
    return next((k for k in range(most, 0, -1) if round(k * dt * 1000) % 10 == 0), most)


def save_gif(policy: nn.Module, make_env: Callable[..., Any], path: str | Path, *, seconds: float = 10.0,
             seed: int = 0, backends: Sequence[str] = ("egl", "osmesa"), start_seconds: float = 0.0) -> None:  # fmt: skip
    """Render one episode of ``policy`` (at most ``seconds`` of simulated time, from ``start_seconds`` on) to
    the GIF ``path``, 320x240, a frame every [`frame_every`][eggroll_trainer.rl.render.frame_every] steps; the
    free camera keeps the task's distance and elevation and follows the torso (body 1) along the ground.

    Args:
        policy: raw observation (obs_dim,) in, action out (e.g. ``PopulationRollout.deployable()``).
        make_env: builds the environment; called with ``render_mode="rgb_array", width=320, height=240``.
        path: the GIF file.
        seconds: simulated seconds to render (the episode may end sooner).
        seed: the episode's reset seed.
        backends: ``MUJOCO_GL`` values tried in turn, each in a child process.
        start_seconds: simulated seconds played before the first frame (the end of a long episode).

    Raises:
        ValueError: invalid arguments, or the episode ended before ``start_seconds``.
        RuntimeError: no backend rendered the GIF (the message says why, per backend).
    """
    if seconds <= 0 or start_seconds < 0 or not backends:
        raise ValueError(
            f"Invalid save_gif: seconds={seconds}, start_seconds={start_seconds}, backends={list(backends)}"
        )
    path, errors = Path(path), []
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    for backend in backends:
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_render_gif,
            args=(policy, make_env, seconds, start_seconds, seed, str(path), backend, send),
        )
        child.start()
        send.close()
        try:
            error = receive.recv()  # "" once the GIF is written, else why not
        except EOFError:  # the child died without a word (a crashing GL driver)
            error = None
        child.join()
        receive.close()
        if child.exitcode == 0 and error == "" and path.exists():
            return
        # not a GL problem: another backend would play the same episode
        if error and error.startswith(_ENDED):
            raise ValueError(error)
        errors.append(f"MUJOCO_GL={backend}: {error or f'the renderer exited with code {child.exitcode}'}")
    raise RuntimeError(f"no offscreen OpenGL backend worked ({'; '.join(errors)})")


_ENDED = "the episode ended after"


def _render_gif(policy: nn.Module, make_env: Callable[..., Any], seconds: float, start_seconds: float, seed: int,
                path: str, backend: str, send: Any) -> None:  # fmt: skip
    os.environ["MUJOCO_GL"] = backend
    try:
        import imageio.v2 as imageio

        env = make_env(render_mode="rgb_array", width=320, height=240)
        obs, _ = env.reset(seed=seed)
        sim, every = env.unwrapped, frame_every(env.unwrapped.dt)
        env.render()  # builds the viewer: its free camera keeps the task's distance and elevation
        camera, frames, first = sim.mujoco_renderer.viewer.cam, [], round(start_seconds / sim.dt)
        for t in range(first + max(1, round(seconds / sim.dt))):  # t + 1: env steps taken
            if t >= first and (t - first) % every == 0:
                camera.lookat[:2] = sim.data.subtree_com[1, :2]  # follow the torso (body 1) along the ground
                frames.append(env.render())
            with torch.no_grad():
                action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        if not frames:
            steps = t + 1
            send.send(
                f"{_ENDED} {steps} steps ({steps * sim.dt:g} s), before start_seconds={start_seconds:g}"
            )
            os._exit(1)
        imageio.mimsave(path, frames, duration=round(1000 * every * sim.dt), loop=0)
    except Exception as err:  # a missing or broken GL library: report it, the caller tries the next backend
        send.send(f"{type(err).__name__}: {err}".splitlines()[0].rstrip("."))
        os._exit(1)
    send.send("")
    os._exit(0)
