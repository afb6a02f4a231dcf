"""A CPU stand-in for an accelerator: tensors that report another device and refuse to meet CPU tensors.

On a machine without a GPU a device mix (noise on the parameters' device multiplied by signs built on the
CPU) goes unnoticed: everything is on the CPU. Inside ``OtherDevice()`` a tensor moved or built on the
``meta`` device (``.to("meta")``, ``torch.ones(..., device=p.device)``) is an ``OnOther`` wrapper around a
real CPU tensor: it reports ``device == meta`` but computes with real values, so the library's code runs
unchanged — ``.item()``, ``.cpu()`` and ``.to("cpu")`` work, ``.numpy()`` raises CUDA's ``TypeError`` — and
every aten op whose tensor arguments mix wrapped tensors with CPU tensors of one or more dimensions raises
``DeviceMix``, as CUDA would. (CPU 0-dim tensors mix freely, as on CUDA; ``copy_`` and ``.to`` cross over.)

Why ``meta``: torch accepts it on every build without a driver (a fake ``cuda`` device triggers CUDA's lazy
initialisation), and no library code treats it specially.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

OTHER = torch.device("meta")

#: Ops that move data between devices by design (as ``cuda_tensor.copy_(cpu_tensor)`` does).
_CROSSING = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}


class DeviceMix(RuntimeError):
    """An op received tensors on the stand-in device and on the CPU."""


class OnOther(torch.Tensor):
    """A CPU tensor ``elem`` that says it lives on ``OTHER``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> OnOther:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=OTHER, requires_grad=elem.requires_grad,
        )  # fmt: skip

    def __init__(self, elem: torch.Tensor) -> None:
        self.elem = elem

    def __repr__(self) -> str:
        return f"OnOther({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})


def _run(func: Any, args: tuple, kwargs: dict) -> Any:
    wrapped: dict[int, OnOther] = {}
    cpu: list[tuple[int, ...]] = []

    def unwrap(t: Any) -> Any:
        if isinstance(t, OnOther):
            wrapped[id(t.elem)] = t
            return t.elem
        if isinstance(t, torch.Tensor) and t.device.type == OTHER.type:
            raise DeviceMix(f"{func}: a real {OTHER} tensor (no values) from a factory the stand-in missed")
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            cpu.append(tuple(t.shape))
        return t

    args, kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    if wrapped and cpu and func not in _CROSSING:
        raise DeviceMix(f"{func}: tensors on {OTHER} and CPU tensors of shapes {cpu}")
    other = bool(wrapped)
    device = kwargs.get("device")
    if device is not None:  # a factory or a move: where the result goes
        other = torch.device(device).type == OTHER.type
        kwargs["device"] = torch.device("cpu")
    out = func(*args, **kwargs)

    def wrap(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) in wrapped:  # an in-place op returns its input: keep the caller's object (ids matter)
            return wrapped[id(t)]
        return OnOther(t) if other else t

    return tree_map(wrap, out)


#: Factories that copy Python data straight to the device without an aten op the dispatch mode sees.
_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


class _DataFactories(TorchFunctionMode):
    """``torch.tensor(data, device=…)`` and indexing with Python lists (``t[..., [0, 2]]``, whose index tensor
    torch builds on ``t``'s device) build their tensors in C++: give them values here. ``p.data = t`` swaps
    the values too. ``.numpy()`` fails as on CUDA."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in _DATA_FACTORIES and device is not None and torch.device(device).type == OTHER.type:
            return OnOther(func(*args, **{**kwargs, "device": "cpu"}))
        if func is torch.Tensor.numpy and isinstance(args[0], OnOther):  # CUDA's message and type
            raise TypeError(f"can't convert {OTHER} device type tensor to numpy. Use Tensor.cpu() first.")
        if func == _SET_DATA and isinstance(args[0], OnOther) and isinstance(args[1], OnOther):
            func(*args, **kwargs)  # the wrapper's dtype and shape
            args[0].elem = args[1].elem  # and the values it computes with
            return None
        if func in _INDEXING and isinstance(args[0], OnOther):
            args = (args[0], _list_indices(args[1]), *args[2:])
        return func(*args, **kwargs)


_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_SET_DATA = torch.Tensor.data.__set__  # type: ignore[attr-defined]


def _list_indices(index: Any) -> Any:
    if isinstance(index, list):
        return OnOther(torch.tensor(index))
    if isinstance(index, tuple):
        return tuple(_list_indices(i) for i in index)
    return index


class OtherDevice:
    """Context manager: ``meta`` means the stand-in device (see the module docstring)."""

    def __enter__(self) -> OtherDevice:
        self._modes = [_DataFactories(), _Dispatch()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {})
