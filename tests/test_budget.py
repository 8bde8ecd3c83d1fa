"""Training for a time (`--time 90s`): durations, the budget's bookkeeping on a fake
clock, the schedule over time, a real budgeted run with resume, and `unetkit train`
planning by default."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from unetkit.budget import Budget
from unetkit.cli import build_parser, explicit_settings, main, wants_plan
from unetkit.config import (
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    format_duration,
    parse_duration,
)
from unetkit.optim import FINAL_LR_FRACTION, WARMUP_START, timed_factor
from unetkit.training import train

DEMO_YAML = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
TINY = ["--demo-count", "8", "--demo-size", "48", "--patch-size", "32", "--features", "4",
        "--depth", "2", "--batch-size", "4", "--quiet"]


def tiny_config(out, seconds: float | None) -> Config:
    return Config(model=ModelConfig(features=4, depth=2),
                  data=DataConfig(demo_count=8, demo_size=48, patch_size=32),
                  train=TrainConfig(batch_size=4, time=seconds, out=str(out), precision="fp32"))


def test_durations_read_as_people_write_them():
    assert [parse_duration(t) for t in ("90s", "10m", "1h", "1h30m", "2.5m", "45")] == [
        90, 600, 3600, 5400, 150, 45]
    for bad in ("10x", "m", "1h30", "", "-5m"):
        with pytest.raises(ValueError, match="not a duration such as 90s, 10m or 1h"):
            parse_duration(bad)
    assert [format_duration(s) for s in (42.4, 75, 3600)] == ["42s", "1m 15s", "1h 0m"]
    assert Config.from_dict({"train": {"time": "2m"}}).train.time == 120
    with pytest.raises(ValueError, match="config.train.time: '2 weeks' is not a duration"):
        Config.from_dict({"train": {"time": "2 weeks"}})


def test_bad_time_flag_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--time", "10x", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --time: '10x' is not a duration such as 90s, 10m or 1h" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
    assert main(["train", "--time", "0s", "--out", str(tmp_path / "r")]) == 2
    assert "--time 0.0: expected > 0" in capsys.readouterr().err


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_keeps_time_for_the_end_and_learns_its_cost():
    clock = Clock()
    budget = Budget(100, used=10, end_cost=5, clock=clock)
    assert budget.elapsed() == 10 and budget.remaining() == 90
    assert budget.training_deadline() == pytest.approx(100 - 1.3 * 5)
    assert budget.fraction() == pytest.approx(10 / 93.5)
    clock.now += 80  # elapsed 90
    budget.record_step(2.0)
    assert not budget.training_over()  # 90 + 2 < 93.5
    budget.record_step(6.0)  # smoothed: 0.8 * 2 + 0.2 * 6 = 2.8
    clock.now += 1  # 91 + 2.8 >= 93.5
    assert budget.training_over()
    budget.record_end(20)  # a measured end replaces the guess ...
    assert budget.training_deadline() == pytest.approx(100 - 26)
    budget.record_end(10)  # ... and then the slowest one counts
    assert budget.training_deadline() == pytest.approx(100 - 26)
    assert budget.fraction() == 1.0
    budget.add("training", 61)
    assert budget.summary().startswith("1m 31s of 1m 40s (91%): planning 10s, training 1m 01s")
    # a resumed run names what it had used before
    resumed = Budget(100, used=30, used_by="before resuming", clock=clock)
    assert resumed.summary() == "30s of 1m 40s (30%): before resuming 30s"


def test_schedule_over_time_warms_up_then_ends_with_the_time():
    cfg = dataclasses.replace(Config().optim, schedule="cosine")
    now = [0.0]
    factor = timed_factor(cfg, lambda: now[0])
    assert factor(0) == pytest.approx(WARMUP_START)
    now[0] = 0.03
    assert factor(0) == pytest.approx(1.0)
    now[0] = 0.515  # halfway through the cosine part
    assert factor(0) == pytest.approx(FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) / 2)
    now[0] = 1.0
    assert factor(0) == pytest.approx(FINAL_LR_FRACTION)
    poly = timed_factor(dataclasses.replace(cfg, schedule="poly", poly_power=1.0), lambda: 0.25)
    assert poly(123) == pytest.approx(0.75)


def test_budgeted_run_stops_in_time_and_resumes_with_the_rest(tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(out, 6.0), progress=False)
    rows = result.history
    assert len(rows) > 1  # many short epochs fit
    # ends with the budget: the last save finished by the end (generous for busy machines)
    assert rows[-1]["elapsed_s"] <= 6.0 * 1.25
    assert rows[-1]["lr"] < 0.2 * rows[0]["lr"] or rows[0]["lr"] < 1e-4 * 0.2
    state = torch.load(out / "checkpoints" / "last" / "state.pt", weights_only=False)
    assert 0 < state["budget_used"] <= 7.5
    # resume with a larger total: the run continues from what it had used
    resumed = train(dataclasses.replace(
        tiny_config(out, 10.0), train=dataclasses.replace(
            tiny_config(out, 10.0).train, resume=True)), progress=False)
    assert len(resumed.history) > len(rows)
    assert resumed.history[len(rows)]["elapsed_s"] >= state["budget_used"]
    assert resumed.history[-1]["elapsed_s"] <= 10.0 * 1.25


def test_resume_of_a_spent_budget_trains_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="unetkit")
    out = tmp_path / "run"
    first = train(tiny_config(out, 2.0), progress=False)
    used = torch.load(out / "checkpoints" / "last" / "state.pt", weights_only=False)[
        "budget_used"]
    # a new total below what the run used: nothing left to train
    total = used * 0.9
    again = train(dataclasses.replace(tiny_config(out, total), train=dataclasses.replace(
        tiny_config(out, total).train, resume=True)), progress=True)
    assert len(again.history) == len(first.history)
    assert f"already used its {format_duration(total)}; pass a larger --time" in caplog.text


def test_train_plans_by_default_and_saves_the_plan(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY[:-1], "--lr", "0.005", "--time", "4s", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("plan: 4s on cpu")
    assert "overridden by your flags:" in printed and "--lr 0.005 (plan: 0.001)" in printed
    for folder in (out, out / "checkpoints" / "best", out / "checkpoints" / "last"):
        plan = json.loads((folder / "plan.json").read_text())
        assert plan["seconds"] == 4 and plan["fingerprint"]["images"] == 8
    decisions = {d["setting"]: d for d in plan["decisions"]}
    assert decisions["optim.lr"]["overridden"] and decisions["optim.lr"]["planned"] == 1e-3
    assert decisions["optim.schedule"]["value"] == "cosine"
    saved = Config.load(out / "config.json")
    assert saved.train.time == 4 and saved.optim.lr == 0.005 and saved.model.features == 4


@pytest.mark.parametrize("flags, planned", [
    ([], True),
    (["--time", "5m"], True),
    (["--epochs", "3"], False),
    (["--config", DEMO_YAML], False),
    (["--config", DEMO_YAML, "--time", "2m"], True),
    (["--epochs", "3", "--plan"], True),
    (["--time", "5m", "--no-plan"], False),
    (["--time", "5m", "--resume"], False),
])
def test_when_train_plans(flags, planned):
    args = build_parser().parse_args(["train", *flags])
    assert wants_plan(args, explicit_settings(args)) is planned
