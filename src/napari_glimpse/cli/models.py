"""``napari-glimpse train METHOD ...`` and ``napari-glimpse evaluate METHOD ...``.

One sub-command per registered method; its flags come from the method's training config
(``train``) or inference config (``evaluate``), see :mod:`._method_flags`. ``infer`` lives in
:mod:`.infer`.
"""

from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    from ..methods import get_method, list_methods
    from ..methods.registry import DATA_KINDS
    from ._method_flags import add_config_flags

    train = subparsers.add_parser("train", help="train a registered method (checkpoint per epoch, --resume)")
    train_methods = train.add_subparsers(dest="method", metavar="METHOD")
    evaluate = subparsers.add_parser("evaluate", help="metrics of a checkpoint on labelled data (JSON on stdout)")
    eval_methods = evaluate.add_subparsers(dest="method", metavar="METHOD")
    for name in list_methods():
        spec = get_method(name)
        what, val_what, layout = DATA_KINDS[spec.data]
        if spec.train is not None:
            p = train_methods.add_parser(name, help=spec.title, description=spec.title)
            p.add_argument("--data", required=True, help=f"{what}: {layout}")
            p.add_argument("--val", help=f"{val_what} (same layout); selects the best epoch")
            p.add_argument("--out", required=True,
                           help="best checkpoint (.safetensors); the latest epoch goes to <stem>.last.safetensors")
            p.add_argument("--resume", action="store_true", help="continue from <stem>.last.safetensors")
            p.add_argument("--init", metavar="CKPT",
                           help="start from this checkpoint's weights and config (same method and architecture) "
                                "with a fresh optimizer and schedule: fine-tuning"
                                + (f"; or a shipped one: {', '.join(spec.weights)}" if spec.weights else ""))
            p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--threads", type=int, help="torch CPU threads")
            names = add_config_flags(p, spec.train_config_cls, skip=lambda info: info.group == "inference")
            p.set_defaults(func=train_cmd, config_flags=names)
        if spec.evaluate is not None:
            p = eval_methods.add_parser(name, help=spec.title, description=spec.title)
            p.add_argument("--data", required=True, help=f"labelled data: {layout}")
            p.add_argument("--checkpoint", help="checkpoint file"
                           + (f" or a shipped one: {', '.join(spec.weights)} (default {next(iter(spec.weights))})"
                              if spec.weights else ""))
            p.add_argument("--device", default="auto")
            p.add_argument("--limit", type=int, default=0, help="evaluate the first N items only")
            p.add_argument("--threads", type=int, help="torch CPU threads")
            names = add_config_flags(p, spec.infer_config_cls)
            p.set_defaults(func=evaluate_cmd, config_flags=names)
    calibrate = subparsers.add_parser(
        "calibrate", help="choose a model's slide aggregation and call threshold on validation slides "
                          "and write them into a copy of its checkpoint (JSON report on stdout)")
    cal_methods = calibrate.add_subparsers(dest="method", metavar="METHOD")
    for name in list_methods():
        spec = get_method(name)
        p = cal_methods.add_parser(name, help=spec.title, description=spec.title)
        p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                       help="validation slides with labels.csv (slide,label 0/1); several folders (patch banks, "
                            "sites) make the choice favour the call that transfers between them")
        p.add_argument("--checkpoint", help="checkpoint file"
                       + (f" or a shipped one: {', '.join(spec.weights)} (default {next(iter(spec.weights))})"
                          if spec.weights else ""))
        p.add_argument("--out", help="calibrated checkpoint to write (may be the input; default: report only)")
        p.add_argument("--rule", default="youden",
                       help="threshold rule: youden (max sensitivity + specificity) or sensitivity:S")
        p.add_argument("--aggregations", nargs="+", default=None, metavar="A",
                       help="the aggregations to choose from (default: all are compared; on dense maps the "
                            "choice is largest_region or learned, as max and top_k saturate with slide size); "
                            "give one to impose it, e.g. max (the paper)")
        p.add_argument("--k", type=int, default=None, help="top_k and learned: the k largest scores (default: "
                                                          "the checkpoint's aggregation_k)")
        p.add_argument("--labels", default="labels.csv", help="labels file in --data")
        p.add_argument("--limit", type=int, default=0, help="the first N slides only")
        p.add_argument("--device", default="auto")
        p.add_argument("--threads", type=int, help="torch CPU threads")
        p.set_defaults(func=calibrate_cmd)


def training_config(spec, flags: dict, *, init=None, resume_from=None):
    """The training config of a run: the config stored in ``resume_from`` (resuming) or in
    ``init`` (fine-tuning), else the paper defaults; then the flags.

    Raises
    ------
    GlimpseError
        A value the config refuses (the message names the field).
    """
    from ..config import config_dict, config_from_dict
    from ..errors import GlimpseError
    from ..runtime.checkpoint import read_header

    cls = spec.train_config_cls
    base: dict = {}
    source = resume_from if resume_from is not None else init
    if source is not None:
        stored = read_header(source, expected_method=spec.name).get("config", {})
        base = {k: v for k, v in stored.items() if k in set(config_dict(cls()))}
    try:
        return config_from_dict(cls, {**base, **flags}, where=spec.name)
    except ValueError as exc:
        raise GlimpseError(str(exc)) from None


def train_cmd(args) -> int:
    import torch

    from ..methods import get_method
    from ..methods.registry import resolve_checkpoint
    from ..runtime.distributed import is_main_process
    from ..runtime.fit import last_path
    from ._method_flags import collect
    from ._progress import drive

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_method(args.method)
    init = resolve_checkpoint(spec, args.init) if args.init else None
    last = last_path(args.out)
    config = training_config(spec, collect(args, args.config_flags), init=init,
                             resume_from=last if args.resume and last.exists() else None)
    path = drive(spec.get("train")(args.data, args.out, val_dir=args.val, config=config, resume=args.resume,
                                   device=args.device, seed=args.seed, init=init),
                 desc=spec.name, quiet=not is_main_process(), epoch_lines=True)
    if is_main_process():
        print(f"best checkpoint: {path}", flush=True)
    return 0


def evaluate_cmd(args) -> int:
    from ._method_flags import load_for
    from ._progress import drive

    spec, model, config = load_for(args)
    metrics = drive(spec.get("evaluate")(args.data, model, config, limit=args.limit), quiet=True)
    print(json.dumps(metrics))
    return 0


def calibrate_cmd(args) -> int:
    from ..errors import GlimpseError
    from ..runtime.calibrate import calibrate
    from ._method_flags import load_for
    from ._progress import drive

    spec, model, _ = load_for(args, with_config=False)
    try:
        report = drive(calibrate(spec, model, args.data, args.out, rule=args.rule, k=args.k,
                                 candidates=tuple(args.aggregations) if args.aggregations else None, labels=args.labels,
                                 limit=args.limit), desc=f"calibrate {spec.name}")
    except ValueError as exc:
        raise GlimpseError(f"{', '.join(map(str, args.data))}: {exc}") from None
    print(json.dumps(report))
    return 0
