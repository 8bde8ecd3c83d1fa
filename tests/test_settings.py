"""Settings are refused before anything is read or written: the flag, the value and the
accepted range in one line, the same from flags, config files and Python."""

import dataclasses

import pytest

from unetkit.cli import main
from unetkit.config import (
    AugmentConfig,
    Config,
    DataConfig,
    InferenceConfig,
    OptimConfig,
    SettingError,
    TrainConfig,
)
from unetkit.training import prepare_config, train


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs 0: expected >= 1"),
    (["--batch-size", "0"], "--batch-size 0: expected >= 1"),
    (["--lr", "-0.1"], "--lr -0.1: expected > 0"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5: expected >= 0 and < 1"),
    (["--optimizer", "rmsprop"], "--optimizer rmsprop: expected one of adam, adamw, sgd"),
    (["--patch-size", "7"], "--patch-size 7: expected >= 16"),
    (["--padding", "valid", "--patch-size", "100"], "--patch-size 100: expected >= 188"),
    (["--arch", "resnet_unet", "--patch-size", "16"], "--patch-size 16: expected >= 32"),
    (["--scale", "1.2", "0.8"], "--scale 1.2 0.8: expected two numbers, low <= high"),
    (["--arch", "resnet_unet", "--decoder-channels", "16", "8", "--data", "/nonexistent"],
     "--decoder-channels 16 8: expected 5 values, one per stage of encoder resnet34"),
])
def test_bad_flag_is_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_config_file_meets_the_same_check(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 3, batch_size: 0}\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "--batch-size 0: expected >= 1 (train.batch_size in a config file)" in (
        capsys.readouterr().err)
    with pytest.raises(SettingError, match="train.epochs"):
        Config.from_dict({"train": {"epochs": -1}})


def test_python_callers_meet_the_same_check(tmp_path):
    with pytest.raises(SettingError, match=r"--epochs 0: expected >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(SettingError, match="--lr"):
        dataclasses.replace(OptimConfig(), lr=0.0)
    with pytest.raises(SettingError, match="--blur-prob 2"):
        AugmentConfig(blur_prob=2)
    with pytest.raises(SettingError, match=r"--overlap 1.0: expected >= 0 and < 1$"):
        InferenceConfig(overlap=1.0)
    config = Config()
    config.data = DataConfig(patch_size=8)  # attributes assigned later are checked by train
    config.train = TrainConfig(out=str(tmp_path / "run"))
    with pytest.raises(SettingError, match="--patch-size 8"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_good_settings_pass_and_valid_patch_rounds_up():
    config = Config(model=dataclasses.replace(Config().model, padding="valid", norm=None),
                    data=DataConfig(patch_size=188))
    assert prepare_config(config).data.patch_size == 188
    assert prepare_config(dataclasses.replace(config, data=DataConfig(patch_size=190))
                          ).data.patch_size == 204


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("flags, message", [
    (["--tile", "0"], "--tile 0: expected >= 1"),
    (["--overlap", "1"], "--overlap 1.0: expected >= 0 and < 1"),
    (["--batch-size", "0"], "--batch-size 0: expected >= 1"),
])
def test_tiling_flags_are_checked(tmp_path, capsys, command, flags, message):
    where = [str(tmp_path)] if command == "predict" else ["--data", str(tmp_path)]
    args = [command, "--checkpoint", str(tmp_path / "none"), *where, *flags]
    if command == "predict":
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "checkpoint" not in err  # refused before the checkpoint is read
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv("UNETKIT_DEBUG", raising=False)
    with pytest.raises(SettingError):
        main(["train", "--epochs", "0", "--out", str(tmp_path / "r"), "--debug"])
    monkeypatch.setenv("UNETKIT_DEBUG", "1")
    with pytest.raises(SettingError):
        main(["train", "--epochs", "0", "--out", str(tmp_path / "r")])


def test_machine_problems_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["train", "--device", "gpu", "--out", str(tmp_path / "r")]) == 2
    assert "--device gpu: expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert f"--config {tmp_path}: cannot read it" in capsys.readouterr().err

    import unetkit.training as training

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training, "build_run", out_of_memory)
    assert main(["train", "--no-plan", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "smaller --batch-size" in err and "Traceback" not in err


def test_none_in_a_config_file_unsets_an_optional_setting():
    config = Config.from_dict({"model": {"norm": "none"}, "train": {"steps_per_epoch": "None"}})
    assert config.model.norm is None and config.train.steps_per_epoch is None
