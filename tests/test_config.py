import pytest

from utils.config import parse_config, save_config
from utils.errors import UserError

SPEC = {"lr": (1e-3, "learning rate"), "epochs": (8, "epochs"), "bf16": (False, "autocast"),
        "name": ("run", "name"), "ipcs": ([10, 20], "list"), "ckpt": (None, "path or none")}


def test_defaults_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.01\nepochs: 3\n")
    cfg = parse_config(SPEC, ["--config", str(y), "--epochs", "5", "--bf16", "--ipcs", "10,50", "--ckpt=none"])
    assert cfg == {"lr": 0.01, "epochs": 5, "bf16": True, "name": "run", "ipcs": [10, 50], "ckpt": None}
    assert isinstance(parse_config(SPEC, ["--lr", "1e-4"])["lr"], float)  # YAML would read 1e-4 as a string
    assert parse_config(SPEC, ["--bf16", "false"])["bf16"] is False
    assert parse_config(SPEC, ["--ckpt", "a/b.pt"])["ckpt"] == "a/b.pt"


def test_later_files_win(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("lr: 0.1\nepochs: 2\n")
    b.write_text("lr: 0.2\n")
    assert parse_config(SPEC, ["--config", str(a), "--config", str(b)]) | {} == dict(
        parse_config(SPEC, []), lr=0.2, epochs=2)


@pytest.mark.parametrize("argv, msg", [
    (["--lamda", "1"], "unknown config key 'lamda'"),
    (["--epoch", "1"], "did you mean 'epochs'"),
    (["--epochs", "x"], "expects int"),
    (["--bf16", "maybe"], "must be true or false"),
    (["--epochs"], "needs a value"),
    (["positional"], "unexpected argument"),
])
def test_errors(argv, msg):
    with pytest.raises(UserError, match=msg):
        parse_config(SPEC, argv)


def test_unknown_key_in_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lrr: 0.1\n")
    with pytest.raises(UserError, match="did you mean 'lr'"):
        parse_config(SPEC, ["--config", str(y)])
    with pytest.raises(UserError, match="not found"):
        parse_config(SPEC, ["--config", str(tmp_path / "missing.yaml")])


def test_save_roundtrip(tmp_path):
    cfg = parse_config(SPEC, ["--epochs", "4"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert parse_config(SPEC, ["--config", str(tmp_path / "out" / "config.yaml")]) == cfg


def test_sections(tmp_path):
    y = tmp_path / "subset.yaml"
    y.write_text("epochs: 2\ntrain:\n  lr: 0.5\nsample:\n  lr: 0.7\n  whatever: 1\nevaluate:\n")
    assert parse_config(SPEC, ["--config", str(y)], section="train")["lr"] == 0.5
    with pytest.raises(UserError, match="whatever"):
        parse_config(SPEC, ["--config", str(y)], section="sample")
    cfg = parse_config(SPEC, ["--config", str(y)], section="evaluate")
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 2
