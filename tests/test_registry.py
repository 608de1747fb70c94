"""The method registry that the CLI, the widgets and checkpoints read."""

from __future__ import annotations

import dataclasses

import pytest

from napari_glimpse.methods import MethodSpec, get_method, list_methods, register
from napari_glimpse.methods.celnet.model import CELNetConfig
from napari_glimpse.methods.registry import config_fields


def test_celnet_is_registered_on_import():
    assert "celnet" in list_methods()
    spec = get_method("celnet")
    assert spec.config_cls is CELNetConfig
    for fn in (spec.build_model, spec.train, spec.infer, spec.evaluate, spec.default_checkpoint):
        assert callable(fn)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown method 'nope'.*celnet"):
        get_method("nope")


def test_config_fields_describe_a_form():
    rows = {r["name"]: r for r in config_fields(CELNetConfig)}
    assert rows["lr"]["default"] == 1e-4 and rows["lr"]["group"] == "training"
    assert rows["batch_size"]["min"] == 1
    assert rows["widths"]["default"] == (16, 32, 64)
    assert all(r["help"] for r in rows.values())
    assert {r["group"] for r in rows.values()} == {"network", "training", "data", "inference"}


def test_paper_defaults():
    cfg = CELNetConfig()
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.weight_decay) == (1e-4, 0.9, 64, 1e-5)
    assert cfg.lr_milestones == (0.5, 0.75) and cfg.lr_gamma == 0.5
    assert (cfg.patch_size, cfg.mpp, cfg.spatial_kernels, cfg.reduction) == (96, 0.972, (3, 5, 7), 4)


def test_register_refuses_a_taken_name_and_bad_specs():
    spec = get_method("celnet")
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(spec))
    with pytest.raises(TypeError, match="dataclass"):
        MethodSpec("x", "x", config_cls=dict, build_model=lambda c: None)
    with pytest.raises(ValueError, match="identifier"):
        MethodSpec("no spaces", "x", config_cls=CELNetConfig, build_model=lambda c: None)


def test_a_new_method_appears_without_touching_anything_else():
    @dataclasses.dataclass
    class ToyConfig:
        size: int = dataclasses.field(default=3, metadata={"help": "size"})

    register(MethodSpec("toy_for_test", "a toy", ToyConfig, build_model=lambda c: c.size), replace=True)
    try:
        assert "toy_for_test" in list_methods()
        assert get_method("toy_for_test").build_model(ToyConfig()) == 3
    finally:
        from napari_glimpse.methods import registry

        registry._REGISTRY.pop("toy_for_test")


def test_registry_bool_flags_can_turn_a_field_on_and_off_or_leave_it_to_the_checkpoint():
    import argparse

    from napari_glimpse.cli._method_flags import add_flags, collect, infer_flags
    from napari_glimpse.methods import get_method

    flags = infer_flags(get_method("glimpse-tree"))
    parser = argparse.ArgumentParser()
    add_flags(parser, flags)
    assert collect(parser.parse_args(["--dense"]), flags)["dense"] is True
    assert collect(parser.parse_args(["--no-dense"]), flags)["dense"] is False
    assert "dense" not in collect(parser.parse_args([]), flags)  # None: the checkpoint's own value


def test_declared_infer_parameters_give_the_cli_flags():
    # CELNet declares its "Run model" form (CELNetInferConfig); the CLI's flags are its fields,
    # built by the same code as every method's, and the CELM fields default to the checkpoint's.
    import argparse
    import dataclasses

    from napari_glimpse.cli._method_flags import add_flags, collect, infer_flags
    from napari_glimpse.methods import get_method
    from napari_glimpse.methods.celnet.inference import CELNetInferConfig

    spec = get_method("celnet")
    flags = {f.dest: f for f in infer_flags(spec)}
    assert set(flags) == {f.name for f in dataclasses.fields(CELNetInferConfig)}
    assert "the checkpoint's" in flags["celm_a"].kwargs["help"]
    assert "the checkpoint's" not in flags["batch_size"].kwargs["help"]  # tiles per pass, not the training batch
    parser = argparse.ArgumentParser()
    add_flags(parser, list(flags.values()))
    got = collect(parser.parse_args(["--no-celm", "--tissue", "grey", "--celm-a", "0.25"]), list(flags.values()))
    assert got == {"celm": False, "tissue": "grey", "celm_a": 0.25}
    with pytest.raises(SystemExit):
        parser.parse_args(["--tissue", "nothing"])
    # evaluate's flags still come from evaluate's signature, not the slide form
    assert "tile_size" not in {f.dest for f in infer_flags(spec, spec.evaluate)}
