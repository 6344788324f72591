"""Config loading: variants, overrides, locked keys, and typed conversion to frozen dataclasses."""

import dataclasses
import textwrap

import pytest

from tipjax import config_loader


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    steps: int = 10


@dataclasses.dataclass(frozen=True)
class Exp:
    name: str
    rule: str = "all"
    ratio: float = 1.0
    buckets: tuple[int, ...] = (16,)
    teacher: str | None = None
    optim: Optim = Optim()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent("""
        import ml_collections

        def get_config(arg=None):
            c = ml_collections.ConfigDict()
            c.name = arg or "base"
            c.rule = "soft_or" if arg == "soft_or50" else "all"
            c.ratio = 0.5 if arg == "soft_or50" else 1.0
            c.buckets = (16, 32)
            c.teacher = ml_collections.FieldReference(None, field_type=str)
            c.optim = ml_collections.ConfigDict(dict(lr=1e-3, steps=10))
            return c
    """))
    return path


def test_variant_and_overrides(config_file):
    cd = config_loader.load_config(f"{config_file}:soft_or50", ["--config.optim.lr=3e-7", "optim.steps=5",
                                                       "--config.buckets=(8,64)", "--config.teacher=/x/y"])
    exp = config_loader.to_dataclass(cd, Exp)
    assert exp == Exp(name="soft_or50", rule="soft_or", ratio=0.5, buckets=(8, 64), teacher="/x/y",
                      optim=Optim(lr=3e-7, steps=5))
    hash(exp)  # static under jit


def test_int_override_of_float_field(config_file):
    cd = config_loader.load_config(str(config_file), ["--config.ratio=1"])
    assert isinstance(cd.ratio, float) and cd.ratio == 1.0


@pytest.mark.parametrize("override, key", [
    ("--config.optim.lrr=1", "optim.lrr"),
    ("--config.nope.lr=1", "nope"),
    ("--config.optim.steps=abc", "optim.steps"),
    ("--config.ratio", "ratio"),
])
def test_bad_overrides_name_the_key(config_file, override, key):
    with pytest.raises(config_loader.ConfigError, match=key.replace(".", r"\.")):
        config_loader.load_config(str(config_file), [override])


def test_unknown_and_mistyped_keys_in_conversion():
    with pytest.raises(config_loader.ConfigError, match="extra"):
        config_loader.to_dataclass({"name": "a", "extra": 1}, Exp)
    with pytest.raises(config_loader.ConfigError, match="optim.steps"):
        config_loader.to_dataclass({"name": "a", "optim": {"steps": "ten"}}, Exp)
    with pytest.raises(config_loader.ConfigError, match="ratio"):
        config_loader.to_dataclass({"name": "a", "ratio": "high"}, Exp)


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(config_loader.ConfigError, match="not found"):
        config_loader.load_config(str(tmp_path / "none.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(config_loader.ConfigError, match="get_config"):
        config_loader.load_config(str(bad))


def test_split_config_args():
    spec, overrides, rest = config_loader.split_config_args(
        ["--config=configs/tiny.py:q3_10", "--config.a.b=1", "--workdir", "/tmp/w"])
    assert spec == "configs/tiny.py:q3_10" and overrides == ["--config.a.b=1"] and rest == ["--workdir", "/tmp/w"]
