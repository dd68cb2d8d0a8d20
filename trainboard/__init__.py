"""Trainboard's Python client and `trainboard runs …` commands: plain HTTP, no torch needed.

    from trainboard import Client
    client = Client("http://127.0.0.1:8000")
    run = client.launch("net2", dataset={"kind": "cifar10"}, hyperparameters={"lr": 0.05})
"""

from trainboard.client import (
    ApiError,
    Client,
    ConnectionFailed,
    FieldError,
    Metrics,
    Run,
    RunList,
    Series,
    StreamEvent,
    TrainboardError,
)

__all__ = ["ApiError", "Client", "ConnectionFailed", "FieldError", "Metrics", "Run", "RunList", "Series",
           "StreamEvent", "TrainboardError"]
