"""Checkpoints: safetensors weights plus a JSON header, loaded without executing any code.

File layout: one ``.safetensors`` file. Tensors named ``model.<param>`` hold the weights,
``optim.<index>.<key>`` the optimizer's per-parameter state (e.g. SGD momentum buffers) and
``rng.<name>`` random-generator states. The safetensors metadata holds one key,
``napari_glimpse``, whose value is a JSON object::

    {"format": 1, "method": "celnet", "config": {...dataclass fields...},
     "classes": ["normal", "tumour"], "mpp": 0.972, "epoch": 3,
     "training": {...data summary, seed, ...}, "metrics": {...}, "package_version": "0.1.0",
     "optimizer": {"param_groups": [...], "state_keys": {...}}, "scheduler": {...}, ...}

A pickle (``torch.save`` output, or anything else) is refused before anything is parsed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = [
    "Checkpoint", "save_checkpoint", "load_checkpoint", "load_state_checked", "load_model", "build_from_checkpoint",
    "config_from_checkpoint", "read_header", "edit_config", "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_META_KEY = "napari_glimpse"


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights and everything needed to rebuild the model or resume."""

    path: str
    method: str
    config: dict
    model_state: dict[str, torch.Tensor]
    header: dict = field(default_factory=dict)
    optimizer_state: dict | None = None
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.header.get("epoch", 0))

    @property
    def metrics(self) -> dict:
        return dict(self.header.get("metrics", {}))


def _config_dict(config: Any) -> dict:
    if dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return dict(config)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        return value.item()
    return value


def save_checkpoint(
    path: str | os.PathLike,
    *,
    method: str,
    config: Any,
    model_state: dict[str, torch.Tensor],
    header: dict | None = None,
    optimizer_state: dict | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : path-like
        Destination ``.safetensors`` file; its folder is created.
    method : str
        Registry name of the method the weights belong to.
    config : dataclass or dict
        The method's config; stored as JSON.
    model_state : dict
        ``model.state_dict()``.
    header : dict, optional
        Further JSON-able fields: classes, mpp, epoch, training summary, metrics, scheduler, ...
    optimizer_state : dict, optional
        ``optimizer.state_dict()``; tensors are stored as tensors, the rest as JSON.
    rng_state : dict, optional
        Named uint8 generator states (``torch.get_rng_state()``, ...).

    Returns
    -------
    str
        The path written.
    """
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model_state.items():
        tensors[f"model.{name}"] = t.detach().to("cpu").clone().contiguous()
    meta = dict(header or {})
    meta.update(format=FORMAT_VERSION, method=method, config=_config_dict(config), package_version=__version__)
    if optimizer_state is not None:
        state_keys = {}
        for idx, state in optimizer_state.get("state", {}).items():
            scalars = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").clone().contiguous()
                else:
                    scalars[key] = value
            state_keys[str(idx)] = scalars
        meta["optimizer"] = {"param_groups": optimizer_state.get("param_groups", []), "state_scalars": state_keys}
    for name, t in (rng_state or {}).items():
        tensors[f"rng.{name}"] = t.detach().to("cpu").clone().contiguous()
    metadata = {_META_KEY: json.dumps(_jsonable(meta))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(path)


# safetensors itself refuses headers above 100 MB.
_MAX_HEADER_BYTES = 100_000_000


def _check_safetensors_file(path: Path) -> None:
    """Refuse anything that is not a well-formed safetensors file, without unpickling it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
            if len(head) < 9:
                # Nothing this short loads, pickled or not.
                raise CheckpointError(f"corrupt or truncated checkpoint (file too short: {size} bytes)", path)
            # A safetensors file is an 8-byte little-endian header length, then the JSON header
            # ("{"). The length's low byte may well be 0x80 or "P", so the pickle / zip signatures
            # (0x80 = pickle protocol >= 2, zip = torch.save: both execute code on load) count only
            # when the file is not safetensors-shaped. The shape never depends on the file size:
            # a truncated safetensors file is corrupt, not a pickle.
            (length,) = struct.unpack("<Q", head[:8])
            plausible = 0 < length <= _MAX_HEADER_BYTES
            pickle_like = head[:2] == b"PK" or head[:1] == b"\x80"
            if head[8:9] != b"{" or (pickle_like and not plausible):
                raise CheckpointError("not a safetensors checkpoint; refusing to unpickle", path)
            if not plausible or 8 + length > size:
                raise CheckpointError(
                    f"corrupt or truncated checkpoint (header of {length} bytes, file of {size})", path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc.strerror or exc}", path) from exc


def read_header(path: str | os.PathLike, expected_method: str | None = None) -> dict:
    """The JSON header of a checkpoint (method, config, metrics, ...) without reading its weights.

    Raises
    ------
    CheckpointError
        As :func:`load_checkpoint`, for everything the header shows.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    _check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint ({exc})", path) from exc
    if _META_KEY not in metadata:
        raise CheckpointError("safetensors file without a napari-glimpse header (method, config)", path)
    try:
        header = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"corrupt checkpoint header ({exc})", path) from exc
    method = header.get("method")
    if not isinstance(method, str) or not isinstance(header.get("config"), dict):
        raise CheckpointError("checkpoint header lacks a method name or config", path)
    if expected_method is not None and method != expected_method:
        raise CheckpointError(
            f"checkpoint is for method {method!r}, but method {expected_method!r} was asked for", path
        )
    return header


def load_checkpoint(path: str | os.PathLike, expected_method: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; never executes code from the file.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` file.
    expected_method : str, optional
        When given, a checkpoint of another method is refused.

    Raises
    ------
    CheckpointError
        Missing, pickled, corrupt or truncated file, or a checkpoint of another method.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path, expected_method)
    method = header["method"]
    try:
        tensors = load_file(str(path))
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint ({exc})", path) from exc
    model_state, optim_tensors, rng = {}, {}, {}
    for name, t in tensors.items():
        prefix, _, rest = name.partition(".")
        if prefix == "model":
            model_state[rest] = t
        elif prefix == "optim":
            optim_tensors[rest] = t
        elif prefix == "rng":
            rng[rest] = t
    optimizer_state = None
    if "optimizer" in header:
        opt = header["optimizer"]
        state: dict[int, dict] = {int(k): dict(v) for k, v in opt.get("state_scalars", {}).items()}
        for name, t in optim_tensors.items():
            idx, _, key = name.partition(".")
            state.setdefault(int(idx), {})[key] = t
        optimizer_state = {"state": state, "param_groups": opt.get("param_groups", [])}
    return Checkpoint(
        path=str(path),
        method=method,
        config=header["config"],
        model_state=model_state,
        header=header,
        optimizer_state=optimizer_state,
        rng_state=rng,
    )


def edit_config(src: str | os.PathLike, out: str | os.PathLike, changes: dict, why: str,
                expected_method: str | None = None, config_cls: type | None = None) -> str:
    """Copy checkpoint ``src`` to ``out`` (atomically; ``out`` may be ``src``) with ``changes``
    applied to its config and weights untouched, each change recorded in the header's ``edits``
    (date, field, from, to, why), e.g. settings chosen on validation data after training.
    With ``config_cls``, fields that class declares may be added (a checkpoint older than
    the field; recorded with ``from`` None) and its ``renamed_fields`` are applied first.

    Raises
    ------
    CheckpointError
        As :func:`load_checkpoint`, or when a changed field is not in the stored config.
    """
    ckpt = load_checkpoint(src, expected_method)
    stored = dict(ckpt.config)
    known = set(stored)
    if config_cls is not None:
        stored = _renamed(config_cls, stored)
        known = set(stored) | {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise CheckpointError(f"config fields {unknown} are not in this {ckpt.method} checkpoint", src)
    header = {k: v for k, v in ckpt.header.items()
              if k not in ("format", "method", "config", "package_version", "optimizer")}
    today = datetime.date.today().isoformat()
    header["edits"] = list(header.get("edits", [])) + [
        {"date": today, "field": f"config.{k}", "from": stored.get(k), "to": v, "why": why}
        for k, v in changes.items()]
    return save_checkpoint(out, method=ckpt.method, config={**stored, **changes},
                           model_state=ckpt.model_state, header=header,
                           optimizer_state=ckpt.optimizer_state, rng_state=ckpt.rng_state)


def load_state_checked(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Load weights into ``model``, refusing missing/unexpected keys or shape mismatches.

    Raises
    ------
    CheckpointError
        Naming the parameter and both shapes (checkpoint vs model built from the config).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(checkpoint.model_state))
    unexpected = sorted(set(checkpoint.model_state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint ({checkpoint.method}) does not fit the {type(model).__name__} built from "
            f"its config: missing {missing[:5]}, unexpected {unexpected[:5]}",
            checkpoint.path,
        )
    for name, t in checkpoint.model_state.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"parameter {name!r} has shape {tuple(t.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model built from the config",
                checkpoint.path,
            )
    model.load_state_dict(checkpoint.model_state)


def _renamed(config_cls: type, config: dict) -> dict:
    """A stored config with the class's ``renamed_fields`` ({old: new}) applied (checkpoints
    written before a field was renamed keep loading)."""
    renames = getattr(config_cls, "renamed_fields", {})
    return {renames.get(k, k): v for k, v in config.items()}


def config_from_checkpoint(config_cls: type, checkpoint: Checkpoint):
    """Rebuild the config dataclass stored in a checkpoint.

    Raises
    ------
    CheckpointError
        Fields unknown to ``config_cls`` or values its ``__post_init__`` rejects.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    stored = _renamed(config_cls, checkpoint.config)
    unknown = sorted(set(stored) - known)
    if unknown:
        raise CheckpointError(
            f"checkpoint config fields {unknown} are unknown to {config_cls.__name__} "
            f"(method {checkpoint.method!r}, package {checkpoint.header.get('package_version')})",
            checkpoint.path,
        )
    try:
        return config_cls(**stored)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid {config_cls.__name__} in checkpoint: {exc}", checkpoint.path) from exc


def build_from_checkpoint(path: str | os.PathLike, method: str, config_cls: type, build, device=None):
    """``(model in eval mode, config)``: ``build(config)`` with the checkpoint's config and
    weights; how every method's ``load`` reads its checkpoints (no code is executed).

    Raises
    ------
    CheckpointError
        Unsafe/corrupt file, another method, unknown/invalid config, or weights whose names or
        shapes do not fit the model built from the config.
    """
    ckpt = load_checkpoint(path, expected_method=method)
    config = config_from_checkpoint(config_cls, ckpt)
    model = build(config)
    load_state_checked(model, ckpt)
    if device is not None:
        model = model.to(device)
    return model.eval(), config


def load_model(path: str | os.PathLike, method: str | None = None, device=None, eval: bool = True):
    """The model of a checkpoint of any registered method, through that method's ``load``.

    Parameters
    ----------
    path : path-like
        The checkpoint.
    method : str, optional
        Refuse checkpoints of any other method.
    device : str or torch.device, optional
        Where to put the model (default CPU).
    eval : bool
        Put the model in eval mode.

    Raises
    ------
    CheckpointError
        As :func:`build_from_checkpoint`, or a method that is not registered.
    """
    from ..methods.registry import get_method

    header = read_header(path, expected_method=method)
    try:
        spec = get_method(header["method"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint is for unknown method {header['method']!r}", path) from exc
    model, _ = spec.get("load")(str(path), torch.device(device) if device is not None else torch.device("cpu"))
    return model.eval() if eval else model.train()
