import subprocess
import sys

import pytest

from sqz.cli import main


@pytest.mark.parametrize(
    "args, option",
    [
        (["--bits", "9"], "--bits"),
        (["--bits", "0,8"], "--bits"),
        (["--thresholds=-0.5"], "--thresholds"),
        (["--thresholds", "abc"], "--thresholds"),
        (["--data", "/no/such/folder"], "--data"),
        (["--storage", "gs://bucket/x"], "--storage"),
        (["--workers", "0"], "--workers"),
        (["--epochs", "-1"], "--epochs"),
        (["--model", "resnet50"], "--model"),
        (["--retrain-steps", "-3"], "--retrain-steps"),
        (["--retrain-steps", "20", "--retrain-epochs", "1"], "--retrain-steps"),
        (["--retrain-steps", "20", "--prune-frequency", "50"], "--prune-frequency"),
        (["--prune-frequency", "0"], "--prune-frequency"),
        (["--prune-ramp", "1.5"], "--prune-ramp"),
        (["--prune-schedule", "cubic"], "--prune-schedule"),
        (["--retrain-lr", "-1"], "--retrain-lr"),
        (["--storage", "/proc/sqz-runs"], "--storage: cannot write under /proc"),  # was: refused after Ray started, 72 s
        (["--thresholds", "0.02"], "--thresholds: density 0.02"),  # below what the dense small layers hold
        (["--prune-mode", "density", "--thresholds", "0.5,0.05", "--model", "squeezenet1_1"], "--thresholds: density 0.05"),
    ],
)
def test_bad_input_is_one_line_naming_the_option(args, option, refused_in_process):
    code, err = refused_in_process(["run", *args])  # fails the test if the flow (Prefect, Ray) was reached
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err
    assert "Traceback" not in err


def test_a_fresh_process_refuses_bad_input_in_one_line_before_ray_or_prefect():
    # The cases above run in this process; this one shows a real `sqz` process answering
    # the same way, in the time its imports take (no Ray or Prefect start-up).
    result = subprocess.run([sys.executable, "-m", "sqz.cli", "run", "--bits", "9"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bits" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_density_the_dense_layers_leave_no_room_for_is_refused_before_training_without_torch(tmp_path):
    # Reported: `sqz run --thresholds 0.02` trained first, then every trial failed on it.
    # The chosen model's layer sizes are known at once (sqz.architectures, no torch).
    runs = tmp_path / "runs"
    code = ("import sys\nfrom sqz.cli import main\n"
            f"code = main(['run', '--thresholds', '0.02', '--bits', '4,8', '--storage', {str(runs)!r}])\n"
            "print(code, 'torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sqz run: error: --thresholds: density 0.02 keeps fewer weights than squeezenet_small's")
    assert "9.6%" in lines[0] and "use a density above 0.096 or lower --dense-below" in lines[0]
    assert not runs.exists()


def test_the_density_refusal_follows_dense_below_and_the_mode():
    from sqz.cli import build_parser
    from sqz.cli.run import pipeline_config

    def config(*argv):
        return pipeline_config(build_parser().parse_args(["run", *argv]))

    with pytest.raises(ValueError, match="--thresholds: density 0.05"):
        config("--thresholds", "0.05")
    assert config("--thresholds", "0.05", "--dense-below", "1000").sweep.thresholds == (0.05,)  # no layer stays dense
    assert config("--thresholds", "0.1").sweep.thresholds == (0.1,)  # above the 9.6% the small layers hold
    assert config("--prune-mode", "std", "--thresholds", "0.02").sweep.prune_mode == "std"  # not a density


def test_help_explains_every_subcommand(capsys):
    for command in (["--help"], ["run", "--help"], ["inspect", "--help"], ["report", "--help"], ["models", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--storage", "--workers", "--epochs", "--thresholds", "--bits", "--ray-address"):
        assert option in out


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "squeezenet1_0" in out and "1,248,424" in out and "1,235,496" in out


def test_inspect_prints_the_byte_account(tmp_path, capsys):
    import torch

    from sqz.compress import encode, prune_, quantize_
    from sqz.config import PruneConfig, QuantConfig
    from sqz.models import build_model

    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    prune_(model, PruneConfig(amount=1.0))
    quantize_(model, QuantConfig(bits=4))
    path = tmp_path / "m.sqz"
    path.write_bytes(encode(model))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "features.0.weight" in out and f"file: {path.stat().st_size:,} bytes" in out
    assert main(["inspect", str(tmp_path / "missing.sqz")]) == 2


def test_the_console_keeps_a_failed_trials_line_and_drops_prefects_copies_of_what_the_cli_reports():
    import logging

    from sqz.cli.flowrun import _BadInputOnce

    def record(name, level, message):
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    keep = _BadInputOnce().filter
    # A failed trial's one line names its error (often a ValueError): sqz's lines all pass.
    assert keep(record("sqz.sweep", logging.ERROR, "trial density0.05-b4 failed: ValueError: density: ... (traceback: x)"))
    summary = "TrialsFailed: 4 of 4 sweep trial(s) failed (...); each one's error and traceback: <run>/errors/<trial>.txt"
    assert not keep(record("prefect.task_runs", logging.ERROR, f"Finished in state Failed('Task run encountered an exception {summary}')"))
    assert not keep(record("prefect.flow_runs", logging.INFO, f"Finished in state Failed('Flow run encountered an exception: {summary}')"))
    assert keep(record("prefect.flow_runs", logging.ERROR, "Finished in state Failed('OSError: disk full')"))  # not reported by the CLI


@pytest.fixture
def checkpoint(tmp_path):
    from safetensors.torch import save_file

    from sqz.models import build_model

    path = tmp_path / "m.safetensors"
    save_file(build_model("squeezenet_small", num_classes=10).state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        # Each of these reached Prefect (and most Ray, or a Ray that waited forever) before.
        (["train", "--storage", "{file}/runs"], "--storage: {file} is a file"),
        (["train", "--gpus-per-worker", "1000", "--workers", "1"], "--gpus-per-worker: 1 worker(s) need(s) 1000 GPU(s)"),
        (["sweep", "--checkpoint", "{checkpoint}", "--storage", "{file}/runs"], "--storage: {file} is a file"),
        (["sweep", "--checkpoint", "{checkpoint}", "--gpus-per-trial", "1000"], "--gpus-per-trial: a trial need(s) 1000 GPU(s)"),
        (["sensitivity", "--checkpoint", "{checkpoint}", "--storage", "{file}/runs"], "--storage: {file} is a file"),
        (["eval", "{checkpoint}", "--data", "digits", "--run", "gs://bucket/run"], "--run: unsupported scheme 'gs'"),
        (["eval", "{checkpoint}", "--data", "digits", "--arch", "resnet50"], "--arch: unknown model 'resnet50'"),
        (["import-dc", "{tmp}/missing.net", "{tmp}/out.sqz"], "FILE: no such file: {tmp}/missing.net"),
        (["data", "prepare", "{tmp}/missing", "{tmp}/shards"], "SRC: no such dataset folder: {tmp}/missing"),
        (["data", "prepare", "{tmp}", "{tmp}/shards"], "SRC: {tmp} has neither train/ nor val/"),
        (["data", "prepare", "{tmp}", "{file}/shards"], "DEST_URL: {file} is a file"),
        (["import-dc", "{checkpoint}", "gs://bucket/out.sqz"], "OUT: unsupported scheme 'gs'"),
        (["import-dc", "{checkpoint}", "{file}/out.sqz"], "OUT: {file} is a file"),
        # Was: every write retried for minutes, after Prefect and Ray had started.
        (["run", "--storage", "s3://bucket/runs", "--s3-endpoint", "http://127.0.0.1:9"],
         "--storage: the S3 endpoint http://127.0.0.1:9 does not answer (AWS Error NETWORK_CONNECTION"),
    ],
)
def test_every_command_refuses_bad_locations_and_resources_before_prefect(argv, message, tmp_path, checkpoint, refused_in_process,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # --s3-endpoint sets it: restored after the test
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    values = {"file": str(a_file), "checkpoint": checkpoint, "tmp": str(tmp_path)}
    argv = [arg.format(**values) for arg in argv]
    if "--storage" not in argv and argv[0] in ("train", "sweep", "sensitivity"):
        argv += ["--storage", str(tmp_path / "runs")]
    code, err = refused_in_process(argv)  # fails the test if the command reached its flow
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message.format(**values) in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_local_ray_gets_the_cpus_one_unit_of_work_reserves(monkeypatch):
    # More training workers (or CPUs per trial) than the machine has: Ray waited forever.
    # Now the local Ray is started with at least that many CPUs, as `sqz train` already did.
    import os

    import sqz.cli.run

    class Reached(Exception):
        pass

    calls = []

    def run_flow(flow_of, name, **parameters):
        calls.append(parameters)
        raise Reached

    monkeypatch.setattr(sqz.cli.run, "run_flow", run_flow)
    workers = (os.cpu_count() or 1) + 3
    with pytest.raises(Reached):
        main(["run", "--workers", str(workers)])
    assert calls[0]["num_cpus"] == workers and calls[0]["ray_address"] is None
