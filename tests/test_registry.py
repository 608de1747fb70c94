"""The method registry that the CLI, the widgets and checkpoints read, and the one field helper."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from napari_glimpse.config import check, config_from_dict, fields_of, param
from napari_glimpse.methods import MethodSpec, get_method, list_methods, register
from napari_glimpse.methods.celnet.config import CELNetConfig, CELNetInferConfig
from napari_glimpse.methods.registry import (
    infer_config_for,
    resolve,
    resolve_checkpoint,
    shipped_checkpoint,
)


def test_built_in_methods_are_registered_with_resolvable_references():
    assert {"celnet", "glimpse-tree"} <= set(list_methods())
    for name in ("celnet", "glimpse-tree"):
        spec = get_method(name)
        for attr in ("load", "infer", "train", "evaluate"):
            assert callable(spec.get(attr)), (name, attr)
        assert dataclasses.is_dataclass(spec.train_config_cls) and dataclasses.is_dataclass(spec.infer_config_cls)
        assert spec.default_checkpoint() is not None  # shipped weights are installed
    assert get_method("celnet").train_config_cls is CELNetConfig


def test_listing_methods_and_building_the_cli_import_no_torch():
    code = ("import sys; import napari_glimpse.methods as m; m.list_methods(); "
            "[m.get_method(n).infer_config_cls for n in m.list_methods()]; "
            "from napari_glimpse.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown method 'nope'.*celnet"):
        get_method("nope")


def test_register_refuses_a_taken_name_and_bad_specs():
    spec = get_method("celnet")
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(spec))
    with pytest.raises(ValueError, match="identifier"):
        MethodSpec("no spaces", "x", "a:B", "a:B", "a:f", "a:g")
    with pytest.raises(ValueError, match="data must be one of"):
        MethodSpec("x", "x", "a:B", "a:B", "a:f", "a:g", data="pixels")
    with pytest.raises(ValueError, match="module:attr"):
        resolve("no_colon")


def test_shipped_weights_by_name_and_one_default():
    spec = get_method("glimpse-tree")
    assert list(spec.weights) == ["supervised", "mil"]
    assert spec.default_checkpoint() == shipped_checkpoint(spec, "supervised")
    assert resolve_checkpoint(spec, "mil").endswith("glimpse_tree_mil.safetensors")
    assert resolve_checkpoint(spec, None) == spec.default_checkpoint()
    from napari_glimpse.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(spec, "/no/such.safetensors")


# ----------------------------------------------------------------------------- field helper


@dataclasses.dataclass
class _Demo:
    n: int = param(3, "a count", min=1, max=9)
    x: float = param(0.5, "a fraction", min=0.0, max=1.0, advanced=True)
    mode: str = param("a", "a mode", choices=("a", "b"))
    sizes: tuple[int, ...] = param((2, 4), "per level")
    on: bool = param(True, "a switch")

    def __post_init__(self):
        check(self)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, r"_Demo.n=0 is outside \[1, 9\]"),
    ({"n": 2.5}, r"_Demo.n=2.5 must be a whole number"),
    ({"x": "big"}, r"_Demo.x='big' must be a number"),
    ({"mode": "c"}, r"_Demo.mode='c' must be one of a, b"),
    ({"sizes": [2, 2.5]}, r"_Demo.sizes.*whole numbers"),
    ({"on": "yes"}, r"_Demo.on='yes' must be true or false"),
])
def test_check_names_the_field_and_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _Demo(**kwargs)


def test_check_coerces_json_lists_and_describes_each_field():
    d = _Demo(sizes=[3, 3], n=4.0)
    assert d.sizes == (3, 3) and isinstance(d.n, int)
    info = {f.name: f for f in fields_of(_Demo)}
    assert info["x"].advanced and not info["n"].advanced
    assert (info["n"].min, info["n"].max, info["mode"].choices) == (1, 9, ("a", "b"))
    assert all(f.help for f in info.values())
    with pytest.raises(ValueError, match="has no field bogus"):
        config_from_dict(_Demo, {"bogus": 1})


def test_paper_defaults():
    cfg = CELNetConfig()
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.weight_decay) == (1e-4, 0.9, 64, 1e-5)
    assert cfg.lr_milestones == (0.5, 0.75) and cfg.lr_gamma == 0.5
    assert (cfg.patch_size, cfg.mpp, cfg.spatial_kernels, cfg.reduction) == (96, 0.972, (3, 5, 7), 4)


def test_an_inference_run_takes_the_checkpoints_chosen_values_unless_given():
    from napari_glimpse.methods.registry import LoadedModel

    trained = CELNetConfig(celm_a=0.75, celm_b=0.0, threshold=0.3, batch_size=32)
    model = LoadedModel("celnet", None, trained, None, "cpu")
    cfg = infer_config_for("celnet", model)
    assert (cfg.celm_a, cfg.celm_b, cfg.threshold) == (0.75, 0.0, 0.3)
    assert cfg.batch_size == CELNetInferConfig().batch_size  # tiles per pass, not the training batch
    assert infer_config_for("celnet", model, {"celm_a": 0.25, "threshold": None}).celm_a == 0.25
    with pytest.raises(ValueError, match="has no field leaves"):
        infer_config_for("celnet", model, {"leaves": 8})


# ---------------------------------------------------------------------------------- CLI flags


def _parse(argv):
    from napari_glimpse.cli import build_parser

    return build_parser().parse_args(argv)


def test_cli_flags_come_from_the_configs_and_bool_flags_go_both_ways():
    from napari_glimpse.cli._method_flags import collect

    args = _parse(["infer", "glimpse-tree", "s.tif", "--out", "o", "--dense", "--branching", "4", "2"])
    assert collect(args, args.config_flags) == {"dense": True, "branching": (4, 2)}
    args = _parse(["infer", "glimpse-tree", "s.tif", "--out", "o", "--no-dense"])
    assert collect(args, args.config_flags) == {"dense": False}
    args = _parse(["infer", "celnet", "s.tif", "--out", "o", "--no-celm", "--tissue", "grey", "--celm-a", "0.25"])
    assert collect(args, args.config_flags) == {"celm": False, "tissue": "grey", "celm_a": 0.25}
    assert set(args.config_flags) == {f.name for f in fields_of(CELNetInferConfig)}
    args = _parse(["train", "celnet", "--data", "d", "--out", "o.safetensors", "--epochs", "2",
                   "--channel-window", "none"])
    assert collect(args, args.config_flags) == {"epochs": 2, "channel_window": None}
    assert "celm_a" not in args.config_flags  # chosen on validation data, not trained


@pytest.mark.parametrize("argv", [
    ["train", "glimpse-tree", "--data", "d", "--out", "o", "--epoch-size", "5"],  # CELNet's, not the tree's
    ["train", "glimpse-tree", "--data", "d", "--out", "o", "--workers", "2"],
    ["infer", "celnet", "s.tif", "--out", "o", "--leaves", "8"],
    ["infer", "celnet", "s.tif", "--out", "o", "--tissue", "nothing"],
])
def test_a_flag_the_method_does_not_take_is_an_error(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert "error" in capsys.readouterr().err


def test_help_says_which_defaults_come_from_the_checkpoint(capsys):
    with pytest.raises(SystemExit):
        _parse(["infer", "celnet", "--help"])
    out = capsys.readouterr().out
    assert "the checkpoint's; 0.5 in the paper" in out
