"""Limits that keep one run from holding a worker for ever: the evaluation schedule and the batch size."""

from __future__ import annotations

import threading

import pytest
import torch

from ml.config import ConfigError, TrainConfig
from ml.trainer import eval_schedule, train

NOT_STUCK_S = 10


def computed_within(seconds: float, function, *args):
    """function(*args) on a side thread; fails when it does not return within `seconds`."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__}{args} still computing after {seconds} s"
    return result[0]


@pytest.mark.parametrize("every", [1e-300, 5e-324, 1e-9])
def test_eval_schedule_tiny_every_keeps_one_step_between_evaluations(every: float) -> None:
    steps = sorted(computed_within(NOT_STUCK_S, eval_schedule, 7, 3, every))

    assert steps == list(range(0, 22))  # every step at most, never stuck computing the schedule


def test_eval_schedule_usual_every_unchanged() -> None:
    assert eval_schedule(10, 2, 0.5) == {0: 0.0, 5: 0.5, 10: 1.0, 15: 1.5, 20: 2.0}
    assert sorted(eval_schedule(7, 1, 0.5)) == [0, 4, 7]
    assert sorted(eval_schedule(3, 1, 100.0)) == [0, 3]


class Split:
    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)


class Splits:
    def __init__(self, num_train: int) -> None:
        self.train, self.val, self.test = Split(num_train, 1), Split(20, 2), Split(20, 3)
        self.classes = [str(i) for i in range(10)]


def test_train_batch_larger_than_split_fails_naming_both_numbers() -> None:
    config = TrainConfig(batch_size=512, epochs=1, drop_last=True)

    with pytest.raises(ConfigError) as caught:
        train("task1", config, Splits(450), device="cpu")

    message = caught.value.errors["batch_size"]
    assert "512" in message and "450" in message and "larger than the training split" in message


def test_train_tiny_eval_every_trains_to_the_end() -> None:
    config = TrainConfig(batch_size=64, epochs=1, eval_every=1e-300, early_stop_count=0)

    result = computed_within(60, lambda: train("task1", config, Splits(192), device="cpu"))

    assert result.status == "completed" and result.steps == 3
    assert [entry["step"] for entry in result.history] == [0, 1, 2, 3]


# --------------------------------------------------------------- at launch ---

def eval_every_error(response) -> str:
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    return errors[("body", "hyperparameters", "eval_every")]


def test_create_run_eval_every_tiny_gives_422_naming_the_limit(client) -> None:
    response = client.post("/api/runs", json={"model": "task1", "hyperparameters": {"eval_every": 1e-300}})

    message = eval_every_error(response)
    assert "MAX_EVALUATIONS_PER_RUN=1000" in message and "evaluations" in message


def test_create_run_eval_every_below_one_step_gives_422(client) -> None:
    response = client.post("/api/runs", json={
        "model": "task1", "dataset": {"kind": "cifar10", "limit_train": 100},
        "hyperparameters": {"eval_every": 0.2, "batch_size": 64, "epochs": 1}})

    message = eval_every_error(response)
    assert "less than one training step" in message and "2 steps per epoch" in message


def test_create_run_max_evaluations_setting_is_honoured(client_factory) -> None:
    client = client_factory(MAX_EVALUATIONS_PER_RUN="10")
    body = {"model": "task1", "hyperparameters": {"eval_every": 0.5, "epochs": 6}}

    assert "MAX_EVALUATIONS_PER_RUN=10" in eval_every_error(client.post("/api/runs", json=body))
    body["hyperparameters"]["epochs"] = 5
    assert client.post("/api/runs", json=body).status_code == 201
