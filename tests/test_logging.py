"""segzoo.runtime.dllogger (the built-in DLLogger) and segzoo.runtime.run_logger.create_logger."""
import json
import math
import sys
import time
import types
from datetime import datetime

import numpy as np
import pytest
import torch

from segzoo.runtime import dllogger
from segzoo.runtime import run_logger as run_logging
from segzoo.runtime.dllogger import JSONStreamBackend, Logger, StdOutBackend, Verbosity
from segzoo.runtime.errors import UserError

PREFIX = "TCAPPDLL "


def read_records(path):
    lines = path.read_text().splitlines()
    assert all(line.startswith(PREFIX) for line in lines), lines
    return [json.loads(line[len(PREFIX):]) for line in lines]


@pytest.fixture
def no_tcap(monkeypatch):
    """Make `import tcap_dllogger` fail even where it is installed."""
    monkeypatch.setitem(sys.modules, "tcap_dllogger", None)


def test_json_backend_writes_the_tcap_envelope_with_real_json_data(tmp_path):
    path = tmp_path / "log.json"
    before = time.time()
    logger = Logger([JSONStreamBackend(Verbosity.VERBOSE, path)])
    logger.metadata("train.loss", {"format": ":.4f", "GOAL": "MINIMIZE"})
    logger.log((1, 20), {"train.loss": 0.25, "train.lr": 0.01})
    logger.log("PARAMETER", {"arch": "pspnet", "batch_size": 8})
    logger.log((), {"val.mIoU": 0.5})
    logger.close()
    after = time.time()

    meta, train, param, summary = read_records(path)
    assert meta["type"] == "METADATA" and meta["metric"] == "train.loss"
    assert meta["metadata"] == {"format": ":.4f", "GOAL": "MINIMIZE"}
    assert train["type"] == "LOG" and train["step"] == [1, 20]
    assert train["data"] == {"train.loss": 0.25, "train.lr": 0.01}
    assert param["step"] == "PARAMETER" and param["data"] == {"arch": "pspnet", "batch_size": 8}
    assert summary["step"] == []

    elapsed = [r["elapsedtime"] for r in (meta, train, param, summary)]
    assert all(isinstance(e, float) for e in elapsed) and elapsed == sorted(elapsed)
    assert 0 <= elapsed[0] and elapsed[-1] <= after - before
    for record in (meta, train, param, summary):
        assert isinstance(record["timestamp"], float)
        assert before <= record["timestamp"] <= after
        stamp = datetime.fromisoformat(record["datetime"])
        assert stamp.tzinfo is not None
        assert stamp.timestamp() == pytest.approx(record["timestamp"], abs=1e-6)


def test_json_backend_writes_numpy_tensor_and_non_finite_values(tmp_path):
    path = tmp_path / "log.json"
    logger = Logger([JSONStreamBackend(Verbosity.VERBOSE, path)])
    logger.log((1, 1), {"np": np.float32(0.5), "tensor": torch.tensor(2.0),
                        "loss": math.nan, "other": torch.zeros(2)})
    logger.close()
    (record,) = read_records(path)
    data = record["data"]
    assert data["np"] == 0.5 and data["tensor"] == 2.0
    assert math.isnan(data["loss"])  # a diverged loss stays visible
    assert data["other"] == str(torch.zeros(2))


def test_json_backend_lines_reach_the_file_before_any_flush(tmp_path):
    # A killed run must leave its log complete up to the last record.
    path = tmp_path / "log.json"
    logger = Logger([JSONStreamBackend(Verbosity.VERBOSE, path)])
    logger.log((1, 1), {"train.loss": 1.0})
    assert len(read_records(path)) == 1
    logger.close()


def test_json_backend_truncates_unless_appending(tmp_path):
    path = tmp_path / "log.json"
    for append, expected in ((False, 1), (True, 2), (False, 1)):
        logger = Logger([JSONStreamBackend(Verbosity.VERBOSE, path, append=append)])
        logger.log((1, 1), {"train.loss": 1.0})
        logger.close()
        assert len(read_records(path)) == expected


def test_records_reach_only_backends_verbose_enough(tmp_path, capsys):
    verbose, off = tmp_path / "verbose.json", tmp_path / "off.json"
    logger = Logger([StdOutBackend(Verbosity.DEFAULT),
                     JSONStreamBackend(Verbosity.VERBOSE, verbose),
                     JSONStreamBackend(Verbosity.OFF, off)])
    logger.log((1, 1), {"detail": 1}, verbosity=Verbosity.VERBOSE)
    logger.log((1, 2), {"summary": 2}, verbosity=Verbosity.DEFAULT)
    logger.log((1, 3), {"summary": 3})  # DEFAULT is the default
    logger.close()

    assert [r["step"] for r in read_records(verbose)] == [[1, 1], [1, 2], [1, 3]]
    assert read_records(off) == []
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "summary : 2" in printed[0] and "summary : 3" in printed[1]


def test_stdout_backend_uses_metadata_format_and_unit(capsys):
    logger = Logger([StdOutBackend(Verbosity.VERBOSE)])
    logger.metadata("train.loss", {"format": ":.3f"})
    logger.metadata("train.ips", {"format": ":.1f", "unit": "imgs/s"})
    logger.log((2, 40), {"train.loss": 0.123456, "train.ips": 12.34, "note": "warmup"})
    logger.log("PARAMETER", {"arch": "ccnet"})
    logger.log((3,), {"train.loss": "not-a-number"})  # a value the format cannot take
    train, param, epoch = capsys.readouterr().out.splitlines()

    assert train.startswith(PREFIX)
    datetime.strptime(train[len(PREFIX):].split(" - ")[0], "%Y-%m-%d %H:%M:%S.%f")
    assert train.split(" - ", 1)[1] == (
        "Epoch: 2 Iteration: 40  train.loss : 0.123  train.ips : 12.3 imgs/s  note : warmup")
    assert param.endswith(" - PARAMETER  arch : ccnet")
    assert epoch.endswith(" - Epoch: 3  train.loss : not-a-number")


def test_stdout_backend_takes_custom_formatters(capsys):
    backend = StdOutBackend(Verbosity.DEFAULT, step_format=lambda step: f"<{step}>",
                            metric_format=lambda m, meta, v: f"{m}={v}",
                            prefix_format=lambda ts: "P ")
    Logger([backend]).log((1, 2), {"a": 1, "b": 2})
    assert capsys.readouterr().out == "P <(1, 2)>  a=1  b=2\n"


def test_create_logger_falls_back_to_the_builtin_logger(tmp_path, capsys, no_tcap):
    path = tmp_path / "run" / "logs" / "train.log"  # folders that do not exist yet
    logger = run_logging.create_logger(path)
    assert run_logging.logger_module() is dllogger
    assert isinstance(logger, dllogger.Logger)
    logger.log((1, 1), {"train.loss": 0.5, "train.ips": 10.0}, verbosity=Verbosity.DEFAULT)
    logger.log((1, 2), {"train.loss": 0.4}, verbosity=Verbosity.VERBOSE)
    logger.close()

    records = read_records(path)
    declared = {r["metric"]: r["metadata"] for r in records if r["type"] == "METADATA"}
    assert declared == run_logging.METRIC_METADATA
    assert [r["step"] for r in records if r["type"] == "LOG"] == [[1, 1], [1, 2]]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "train.loss : 0.5000  train.ips : 10.00 imgs/s" in printed[0]


def test_metric_metadata_covers_the_runners_metrics():
    expected = {"train.loss", "train.lr", "train.ips", "train.data_time", "train.compute_time",
                "val.loss", "val.ips", "val.mIoU", "val.overall_acc", "val.mean_acc",
                "val.freqw_acc"}
    assert set(run_logging.METRIC_METADATA) == expected
    for name, meta in run_logging.METRIC_METADATA.items():
        assert meta["STAGE"] == ("TRAIN" if name.startswith("train.") else "VALID"), name
        assert meta.get("GOAL", "MINIMIZE") in ("MINIMIZE", "MAXIMIZE"), name
        ("{" + meta["format"] + "}").format(0.5)  # a usable format spec
    goals = {name: meta.get("GOAL") for name, meta in run_logging.METRIC_METADATA.items()}
    assert goals["train.loss"] == goals["val.loss"] == "MINIMIZE"
    assert goals["val.mIoU"] == goals["train.ips"] == "MAXIMIZE"


def test_disabled_logger_does_nothing(tmp_path, capsys, no_tcap):
    path = tmp_path / "train.log"
    logger = run_logging.create_logger(path, enabled=False)
    assert logger.backends == []
    logger.log((1, 1), {"train.loss": 0.5}, verbosity=Verbosity.DEFAULT)
    logger.flush()
    assert not path.exists()
    assert capsys.readouterr().out == ""


def test_logger_without_path_prints_only(tmp_path, capsys, no_tcap, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger = run_logging.create_logger(None)
    logger.log((1, 1), {"train.loss": 0.5}, verbosity=Verbosity.DEFAULT)
    assert [type(b) for b in logger.backends] == [StdOutBackend]
    assert "train.loss : 0.5000" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_unwritable_log_path_is_a_user_error(tmp_path, no_tcap):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write the log file"):
        run_logging.create_logger(blocker / "train.log")


def test_create_logger_prefers_tcap_dllogger_when_installed(tmp_path, monkeypatch):
    """A stand-in tcap_dllogger module records how create_logger builds its logger."""
    built = []

    class FakeLogger:
        def __init__(self, backends):
            self.backends, self.metadata_calls = backends, []
            built.append(self)

        def metadata(self, metric, metadata):
            self.metadata_calls.append(metric)

    def backend(kind):
        return lambda verbosity, *args, **kwargs: (kind, verbosity, args, kwargs)

    fake = types.ModuleType("tcap_dllogger")
    fake.Logger = FakeLogger
    fake.StdOutBackend = backend("stdout")
    fake.JSONStreamBackend = backend("json")
    monkeypatch.setitem(sys.modules, "tcap_dllogger", fake)

    logger = run_logging.create_logger(tmp_path / "train.log")
    assert run_logging.logger_module() is fake and built == [logger]
    assert logger.backends == [
        ("stdout", Verbosity.DEFAULT, (), {}),
        ("json", Verbosity.VERBOSE, (str(tmp_path / "train.log"),), {"append": False}),
    ]
    assert logger.metadata_calls == list(run_logging.METRIC_METADATA)
    assert run_logging.create_logger(tmp_path / "x.log", enabled=False).backends == []
