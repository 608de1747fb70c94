"""``napari-glimpse train METHOD ...`` and ``napari-glimpse evaluate METHOD ...``.

Methods come from the registry; ``infer`` lives in :mod:`.infer`.
"""

from __future__ import annotations

import json
import sys


def add_parsers(subparsers) -> None:
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)


def _method_names() -> list[str]:
    from ..methods import list_methods

    return list_methods()


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on patch folders (0/ normal, 1/ tumour)")
    p.add_argument("method", choices=_method_names(), help="registered method")
    p.add_argument("--data", required=True, help="training patch folder with class sub-folders 0/ and 1/")
    p.add_argument("--val", help="validation patch folder (same layout); selects the best epoch")
    p.add_argument("--out", required=True, help="best checkpoint (.safetensors); the latest epoch goes to <stem>.last.safetensors")
    p.add_argument("--epochs", type=int, help="epochs (default: the method's config)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the method's config)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the method's config)")
    p.add_argument("--epoch-size", type=int, help="patches drawn per epoch (default: all)")
    p.add_argument("--val-limit", type=int, help="validate on a stratified subset of this many patches")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set blocks=1 (JSON values)")
    p.add_argument("--resume", action="store_true", help="continue from <stem>.last.safetensors")
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint's weights (same method and "
                   "architecture) with a fresh optimizer and schedule: fine-tuning")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="image decoding threads")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    _add_method_flags(p, "train")
    p.set_defaults(func=train_cmd)


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="accuracy and AUC of a checkpoint on a patch folder (JSON on stdout)")
    p.add_argument("method", choices=_method_names(), help="registered method")
    p.add_argument("--data", required=True, help="patch folder with class sub-folders 0/ and 1/")
    p.add_argument("--checkpoint", help="checkpoint (default: the shipped one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, help="evaluate a stratified subset of this many patches")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    _add_method_flags(p, "evaluate")
    p.set_defaults(func=evaluate_cmd)


def _method_flags(spec, command: str):
    """Method-specific flags: training declares config fields in ``extra["cli_train_flags"]``;
    evaluation takes the inference parameters that ``spec.evaluate`` accepts."""
    from ._method_flags import config_flags, infer_flags

    if command == "train":
        return config_flags(spec, (spec.extra or {}).get("cli_train_flags", ()))
    return infer_flags(spec, spec.evaluate) if spec.evaluate is not None else []


def _add_method_flags(parser, command: str) -> None:
    from ..methods import get_method
    from ._method_flags import add_flags

    seen: set = set()
    for name in _method_names():
        add_flags(parser, _method_flags(get_method(name), command), seen)


def _config_from_args(spec, overrides: list[str]):
    import dataclasses

    from ..errors import GlimpseError

    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    values = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep or name not in names:
            raise GlimpseError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(names)}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    try:
        return spec.config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise GlimpseError(f"invalid {spec.name} config: {exc}") from exc


def _drive(gen, quiet: bool = False):
    """Run a progress generator to its result; epoch summaries on stdout, the rest on stderr.

    Under torchrun only rank 0 prints.
    """
    from ..runtime.distributed import is_main_process

    quiet = quiet or not is_main_process()
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if quiet:
            continue
        if ev.stage in ("epoch", "resume"):
            print(str(ev), flush=True)
        elif ev.stage in ("train", "validate", "evaluate", "load") and (ev.done == ev.total or ev.done % 20 == 0):
            print(str(ev), file=sys.stderr, flush=True)


def train_cmd(args) -> int:
    import torch

    from ..methods import get_method

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_method(args.method)
    config = _config_from_args(spec, args.set)
    import dataclasses

    from ..errors import GlimpseError
    from ._method_flags import collect

    chosen = collect(args, _method_flags(spec, "train"))
    # the common flags are config fields too (training options live in the config)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    for name in ("epochs", "lr", "batch_size", "epoch_size", "val_limit", "workers"):
        value = getattr(args, name)
        if value is None:
            continue
        if name not in fields:
            raise GlimpseError(f"--{name.replace('_', '-')}: {spec.name} has no config field {name!r}")
        chosen[name] = value
    if chosen:
        config = dataclasses.replace(config, **chosen)
    path = _drive(spec.train(
        args.data, args.out, val_dir=args.val, config=config, resume=args.resume, device=args.device,
        seed=args.seed, init=args.init,
    ))
    from ..runtime.distributed import is_main_process

    if is_main_process():
        print(f"best checkpoint: {path}", flush=True)
    return 0


def evaluate_cmd(args) -> int:
    import torch

    from ..methods import get_method

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_method(args.method)
    from ._method_flags import collect

    # Flags generated from evaluate()'s signature may repeat the common ones passed below.
    common = {"device", "batch_size", "workers", "limit"}
    extra = {k: v for k, v in collect(args, _method_flags(spec, "evaluate")).items() if k not in common}
    metrics = _drive(spec.evaluate(args.data, args.checkpoint, device=args.device, batch_size=args.batch_size,
                                   workers=args.workers, limit=args.limit, **extra), quiet=True)
    print(json.dumps(metrics))
    return 0
