"""Logging backends (`train.report_to`) through their own libraries, read back from the
files they write: TensorBoard's event files, W&B's offline run file."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from verirl import ConfigError
from verirl.metrics import BACKEND_PACKAGES, check_backends, read_metrics


def test_tensorboard_events_hold_the_metrics_and_a_resume_purges_the_redone_steps(small_config, train_run, tmp_path):
    pytest.importorskip("tensorboard", reason="the logging extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_run(small_config(out, "train.steps=3", "train.save_every=2", "train.report_to=[tensorboard]"))
    # as if killed after step 3 was logged but before its checkpoint: resume redoes step 3
    shutil.rmtree(out / "checkpoints" / "step_000003")
    train_run(small_config(out, "train.steps=4", "train.save_every=2", "train.report_to=[tensorboard]",
                           "train.resume=true"))
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for key in ("reward/mean", "policy/entropy", "rollout/len_mean"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3, 4], key  # step 3 once, from the resumed run
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file: a 7-byte header, then a LevelDB-style log of
    32 KiB blocks whose chunks (7-byte header: crc, length, type) make up each record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, buf, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += 7
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_run_holds_the_config_and_every_step(small_config, train_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the logging extra (wandb) is not installed")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train_run(small_config(out, "train.steps=3", "train.save_every=0", "train.report_to=[wandb]",
                           "train.run_name=tiny-check", "train.wandb_project=verirl-tests"))
    run_id = (out / "wandb-run-id").read_text().strip()
    (run_file,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    # W&B's service process writes the file behind the run: wait for the run's exit record
    deadline = time.monotonic() + 60
    records = wandb_records(run_file)
    while "exit" not in {r.WhichOneof("record_type") for r in records}:
        assert time.monotonic() < deadline, [r.WhichOneof("record_type") for r in records]
        time.sleep(0.2)
        records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id and run.display_name == "tiny-check" and run.project == "verirl-tests"
    config_items = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config_items["train"]["steps"] == 3 and config_items["algo"]["name"] == "grpo"
    # an item names its key in `key`, or in `nested_key` (a path of one key here)
    history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    metrics = read_metrics(out)
    assert [h["_step"] for h in history] == [1, 2, 3]
    for h, m in zip(history, metrics):
        assert h["reward/mean"] == pytest.approx(m["reward/mean"]) and h["policy/loss"] == pytest.approx(m["policy/loss"])


def test_a_backend_asked_for_but_not_installed_is_refused_before_anything_loads(monkeypatch):
    monkeypatch.setitem(BACKEND_PACKAGES, "wandb", "verirl_no_such_package")
    with pytest.raises(ConfigError, match=r"'wandb', but the verirl_no_such_package package is not installed: "
                                          r"pip install 'verirl\[logging\]'"):
        check_backends(["wandb"])
