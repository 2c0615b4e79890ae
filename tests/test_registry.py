"""The Registry (minbert.registry) on its own, and each of minbert's eight registries through the
config: an unknown name lists the known ones, a bad keyword argument names the config field."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from minbert.config import ConfigError
from minbert.multitask import COMBINERS, SAMPLERS
from minbert.optim.child_tuning import CHILD_TUNING
from minbert.optim.schedules import SCHEDULES
from minbert.registry import Registry
from minbert.regularizers import REGULARIZERS
from minbert.tasks.losses import LOSSES
from minbert.tasks.pairs import PAIR_MODES
from minbert.tasks.pooling import POOLINGS
from minbert.training.build import check
from tests.tiny import tiny_config

# -- the Registry class -----------------------------------------------------------------


class Point:
    def __init__(self, x, y=0, *, label="p"):
        self.x, self.y, self.label = x, y, label


def scale(value, factor=2):
    return value * factor


def anything(*args, **kwargs):
    return args, kwargs


def things() -> Registry:
    reg = Registry("thing")
    reg.register("point")(Point)
    reg.register("scale")(scale)
    reg.register("anything")(anything)
    return reg


def test_register_returns_the_entry_and_refuses_a_name_twice():
    reg = Registry("thing")
    assert reg.register("scale")(scale) is scale  # usable as a decorator: the entry is unchanged
    with pytest.raises(ValueError, match="^thing 'scale' is registered twice$"):
        reg.register("scale")(Point)
    assert reg["scale"] is scale  # the first registration stands


def test_lookup_of_an_unknown_name_lists_the_known_ones_sorted_and_quoted():
    reg = things()
    assert reg.lookup("point") is Point
    with pytest.raises(ValueError) as err:
        reg.lookup("pointt")
    assert str(err.value) == "unknown thing 'pointt'; known: 'anything', 'point', 'scale'"


def test_check_names_unknown_keyword_arguments_and_lists_the_accepted_ones():
    reg = things()
    assert reg.check("point", 1, y=2, label="q") is Point
    with pytest.raises(ValueError) as err:
        reg.check("point", 1, z=3, colour="red")
    assert str(err.value) == "unknown argument(s) colour, z for thing 'point'; accepted: y, label"
    with pytest.raises(ValueError) as err:  # arguments given by position are not offered again
        reg.check("point", 1, 2, x=1)
    assert str(err.value) == "unknown argument(s) x for thing 'point'; accepted: label"
    with pytest.raises(ValueError, match="^unknown thing 'nope'"):  # the name is checked first
        reg.check("nope", bogus=1)
    assert reg.check("anything", 1, whatever=2) is anything  # **kwargs: any keyword binds


def test_check_of_a_missing_required_argument_names_the_kind_and_entry():
    with pytest.raises(ValueError, match="^bad arguments for thing 'point': .*'x'"):
        things().check("point", y=1)
    with pytest.raises(ValueError, match="^bad arguments for thing 'scale': "):  # one positional too many
        things().check("scale", 1, 2, 3)


def test_build_returns_the_constructed_object():
    reg = things()
    p = reg.build("point", 3, label="q")
    assert isinstance(p, Point) and (p.x, p.y, p.label) == (3, 0, "q")
    assert reg.build("scale", 5, factor=3) == 15
    with pytest.raises(ValueError, match="unknown argument"):
        reg.build("scale", 5, factr=3)


def test_a_registry_is_a_read_only_mapping():
    reg = things()
    assert isinstance(reg, Mapping)
    assert list(reg) == ["point", "scale", "anything"] and len(reg) == 3  # registration order
    assert sorted(reg) == ["anything", "point", "scale"]
    assert "scale" in reg and "nope" not in reg
    assert reg["point"] is Point and reg.get("nope") is None
    assert dict(reg) == {"point": Point, "scale": scale, "anything": anything}
    with pytest.raises(KeyError):
        reg["nope"]
    with pytest.raises(TypeError):
        reg["new"] = scale
    assert repr(reg) == "Registry('thing': point, scale, anything)"


# -- each registry of minbert, through the config ---------------------------------------
#
# kind -> (registry, its known names, the config field naming an entry, the bad name set there)

KINDS = {
    "loss": (LOSSES, ["bce", "cosent", "cosine_mse", "cross_entropy", "mse"], "tasks.sst.loss", "hinge"),
    "pooling": (POOLINGS, ["cls", "cls_raw", "max", "mean"], "tasks.sst.pooling", "median"),
    "schedule": (
        SCHEDULES,
        ["constant", "constant_warmup", "cosine", "cosine_restarts", "linear", "polynomial"],
        "optim.schedule",
        "sawtooth",
    ),
    "child_tuning": (CHILD_TUNING, ["D", "F"], "optim.child_tuning", "E"),
    "regularizer": (REGULARIZERS, ["none", "smart"], "train.regularizer", "vat"),
    "pair_mode": (PAIR_MODES, ["bi", "cosine", "cross", "hybrid", "single"], "tasks.sst.pair_mode", "siamese"),
    "combiner": (
        COMBINERS,
        [
            "cagrad",
            "dwa",
            "equal",
            "fixed",
            "generalised_mean",
            "gradnorm",
            "gradvac",
            "initial_loss",
            "mgda",
            "normalised_gradients",
            "pcgrad",
            "primary",
            "realtime_loss",
            "sum",
            "uncertainty",
        ],
        "train.combiner",
        "magic",
    ),
    "sampler": (
        SAMPLERS,
        ["annealed", "annealed_linear", "annealed_pals", "mixed", "proportional", "round_robin", "sequential"],
        "train.sampler",
        "zigzag",
    ),
}

# kind -> (an entry that takes keyword arguments, its kwargs field, a misspelt keyword); poolings and
# pair modes take none from the config
BAD_KEYWORDS = {
    "loss": ("cross_entropy", "tasks.sst.loss_kwargs", "smoothing"),
    "schedule": ("cosine", "optim.schedule_kwargs", "cycles"),
    "child_tuning": ("F", "optim.child_tuning_kwargs", "reserve"),
    "regularizer": ("smart", "train.regularizer_kwargs", "lamda_s"),
    "combiner": ("dwa", "train.combiner_kwargs", "temp"),
    "sampler": ("annealed", "train.sampler_kwargs", "anneal"),
}


def set_field(cfg, dotted: str, value) -> None:
    *path, name = dotted.split(".")
    obj = cfg
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    setattr(obj, name, value)


def test_the_table_covers_every_registry():
    assert len({id(reg) for reg, *_ in KINDS.values()}) == 8
    assert set(BAD_KEYWORDS) == set(KINDS) - {"pooling", "pair_mode"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_unknown_name_in_the_config_lists_the_known_names_and_names_the_field(kind, tiny_model_dir, data_dir, tmp_path):
    registry, known, field, bad = KINDS[kind]
    assert sorted(registry) == known
    listed = "known: " + ", ".join(f"'{n}'" for n in known)
    with pytest.raises(ValueError) as err:
        registry.lookup(bad)
    assert str(err.value) == f"unknown {registry.kind} '{bad}'; {listed}"

    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"])
    set_field(cfg, field, bad)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    message = str(err.value)
    assert message.startswith(f"config field '{field}': ") and f"'{bad}'" in message and listed in message


@pytest.mark.parametrize("kind", list(BAD_KEYWORDS))
def test_bad_keyword_in_the_config_names_the_field_and_the_keyword(kind, tiny_model_dir, data_dir, tmp_path):
    registry, _, field, _ = KINDS[kind]
    name, kwargs_field, bad = BAD_KEYWORDS[kind]
    cfg = tiny_config(tiny_model_dir, data_dir, tmp_path, ["sst"])
    set_field(cfg, field, name)
    set_field(cfg, kwargs_field, {bad: 1})
    with pytest.raises(ConfigError) as err:
        check(cfg)
    message = str(err.value)
    assert message.startswith(f"config field '{field}': ")
    assert f"unknown argument(s) {bad} for {registry.kind} '{name}'; accepted: " in message


# Positional arguments each kind's entries are built with (the rest come from the config).
BUILD_ARGS = {
    "loss": (),
    "schedule": (0,),
    "child_tuning": ([], None),
    "regularizer": (None,),
    "combiner": (["sst"],),
    "sampler": (),
}
SCHEDULE_KWARGS = {"warmup": 0, "total": 1}  # given by get_schedule, not by the config


@pytest.mark.parametrize("kind, name", [(kind, name) for kind in BAD_KEYWORDS for name in sorted(KINDS[kind][0])])
def test_registry_check_names_a_misspelt_keyword_for_every_entry(kind, name):
    registry = KINDS[kind][0]
    extra = SCHEDULE_KWARGS if kind == "schedule" else {}
    with pytest.raises(ValueError, match=f"unknown argument\\(s\\) bogus for {registry.kind} '{name}'"):
        registry.check(name, *BUILD_ARGS[kind], **extra, bogus=1)
