"""adb targets: benchmark_model's output parsed from recorded real runs, the exact commands, and
the whole flow against a stand-in adb (no phone here: see the README for what ran on a device)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.bench.adb import AdbConfig, adb_commands, device_name, parse_benchmark_model
from edgekd.errors import BenchmarkError

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_model"


def _parse(name: str) -> dict:
    return parse_benchmark_model((FIXTURES / name).read_text())


def test_cpu_run_with_four_threads():  # tensorflow/tensorflow#42507, an Android phone
    r = _parse("cpu_4threads_op_profiling_tf42507.txt")
    lat = r["latency"]
    assert (lat["n"], lat["mean_ms"], lat["std_ms"], lat["min_ms"], lat["max_ms"]) == (50, 33.2094, 0.45, 32.641, 34.005)
    assert lat["p50_ms"] is None and "not reported" in lat["percentiles"]
    assert (r["load_ms"], r["first_inference_ms"], r["warmup_mean_ms"]) == (0.855, 49.06, 34.8251)
    assert r["memory"]["peak_bytes"] == int(12.8672 * 2**20) and r["memory"]["kind"] == "peak footprint"
    assert r["threads"] == 4 and r["delegate"] is None and r["accelerator_coverage"] is None


def test_gpu_delegate_fully_applied():  # tensorflow/tensorflow#43541
    r = _parse("gpu_opencl_op_profiling_tf43541.txt")
    assert r["latency"]["mean_ms"] == 119.375 and r["load_ms"] == 870.557
    assert r["delegate"] == {"name": "GPU", "complete": True, "kernels": 1}
    assert r["accelerator_coverage"] == 1.0 and r["memory"] is None  # the log has no memory line


def test_nnapi_partially_delegated_from_logcat():  # tensorflow/tensorflow#56301, logcat lines
    r = _parse("nnapi_partial_44kernels_logcat_tf56301.txt")
    assert (r["latency"]["n"], r["latency"]["mean_ms"]) == (75, 12.1676)
    assert r["delegate"] == {"name": "NNAPI", "complete": False, "kernels": 44}
    assert r["accelerator_coverage"] is None  # partial: benchmark_model does not say which share


def test_info_prefixed_lines_and_memory_delta():  # tensorflow/tensorflow#61946 (desktop build)
    r = _parse("cpu_info_prefix_desktop_tf61946.txt")
    assert r["latency"]["mean_ms"] == 116.066 and r["load_ms"] == 0.53
    assert r["memory"]["kind"] == "footprint delta from tool start"
    assert r["memory"]["peak_bytes"] == int(12.1914 * 2**20)


def test_xnnpack_delegate_line_is_recognised():  # a Raspberry Pi run with XNNPACK
    r = _parse("cpu_xnnpack_4threads_op_profiling_rpi_xnnpack999.txt")
    assert r["delegate"]["name"] == "XNNPACK" and r["latency"]["mean_ms"] == 55.0432


def test_op_profiling_rows():  # tensorflow/tensorflow#23131, a Pixel: rows of a Run Order table
    from edgekd.bench.adb import clean_lines, parse_op_profile

    rows = parse_op_profile(clean_lines((FIXTURES / "op_profile_rows_pixel_tf23131.txt").read_text()))
    assert len(rows) == 8
    assert rows[0] == {"op": "CONV_2D", "name": "MobilenetV2/Conv_1/Relu6", "first_ms": 6.016,
                       "mean_ms": 6.11, "percent": 6.507}
    assert [row["mean_ms"] for row in rows] == sorted((row["mean_ms"] for row in rows), reverse=True)


def test_a_failed_run_quotes_the_tool():
    with pytest.raises(BenchmarkError, match="printed no timed run: .*Failed to apply GPU delegate"):
        parse_benchmark_model("INFO: STARTING!\nERROR: Failed to apply GPU delegate.\nERROR: Benchmarking failed.\n")


def test_commands_are_exact_and_quoted(tmp_path):
    model = tmp_path / "my model; rm -rf x.tflite"
    model.write_bytes(b"TFL3 model bytes")
    cfg = AdbConfig(benchmark_model="/opt/bin/benchmark_model", serial="R5CT1234", delegate="gpu",
                    extra_flags=["--gpu_precision_loss_allowed=false"])
    name = device_name(model)
    assert name.startswith("edgekd-") and name.endswith(".tflite") and ";" not in name
    cmds = adb_commands(cfg, model, threads=4, warmup_runs=20, min_runs=200, min_seconds=1.0, max_seconds=30.0)
    adb = ["adb", "-s", "R5CT1234"]
    assert cmds == [
        adb + ["shell", "mkdir -p /data/local/tmp/edgekd"],
        adb + ["push", "/opt/bin/benchmark_model", "/data/local/tmp/edgekd/benchmark_model"],
        adb + ["shell", "chmod 755 /data/local/tmp/edgekd/benchmark_model"],
        adb + ["push", str(model), f"/data/local/tmp/edgekd/{name}"],
        adb + ["shell", f"/data/local/tmp/edgekd/benchmark_model --graph=/data/local/tmp/edgekd/{name} "
                        "--num_threads=4 --warmup_runs=20 --num_runs=200 --min_secs=1 --max_secs=30 "
                        "--report_peak_memory_footprint=true --use_gpu=true --gpu_precision_loss_allowed=false"],
        adb + ["shell", f"rm -f /data/local/tmp/edgekd/{name}"]]
    cpu = adb_commands(AdbConfig(benchmark_model="bm", delegate="cpu"), model, threads=1, warmup_runs=1,
                       min_runs=5, min_seconds=0.5, max_seconds=5, profile=True)
    assert cpu[0][:2] == ["adb", "shell"]  # no serial: the only device attached
    assert cpu[4][2].endswith("--use_xnnpack=false --enable_op_profiling=true")


def test_profile_fields_are_validated():
    from edgekd.config import FieldError

    with pytest.raises(FieldError, match="extra_flags.0: expected --name=value"):
        AdbConfig(benchmark_model="bm", extra_flags=["--use_gpu=true; reboot"])
    with pytest.raises(FieldError, match="remote_dir: expected an absolute device path"):
        AdbConfig(benchmark_model="bm", remote_dir="tmp")


FAKE_ADB = '''#!{python}
"""Stands in for adb: logs each call; 'shell .../benchmark_model ...' prints a recorded real run."""
import json, sys
log = {log!r}
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:2] == ["-s", "FAKE01"]:
    args = args[2:]
if args[:1] == ["get-serialno"]:
    print("FAKE01")
elif args[:1] == ["shell"] and "benchmark_model --graph=" in args[1]:
    sys.stdout.write(open({fixture!r}).read())
elif args[:1] == ["shell"] and args[1] == "getprop ro.product.model":
    print("Pixel 8")
'''


def test_the_whole_adb_flow_against_a_stand_in_adb(tmp_path, exported):
    from edgekd.bench import benchmark_on_target
    from edgekd.targets import load_target

    log = tmp_path / "calls.jsonl"
    source, fake = tmp_path / "adb.txt", tmp_path / "adb"
    source.write_text(FAKE_ADB.format(python=sys.executable, log=str(log),
                                      fixture=str(FIXTURES / "cpu_4threads_op_profiling_tf42507.txt")))
    # copied by another process: a file this process wrote can still be open for writing in a child
    # another thread forked meanwhile, and exec'ing it then fails with ETXTBSY ("Text file busy")
    subprocess.run(["cp", str(source), str(fake)], check=True)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    profile = tmp_path / "pixel.yaml"
    profile.write_text(f"name: pixel\nconnection: adb\nadb: {{adb: {fake}, serial: FAKE01, "
                       f"benchmark_model: {binary}, delegate: xnnpack}}\nthreads: 4\nruntimes: {{litert: {{}}}}\n")
    result = benchmark_on_target(exported[("int8", "tflite")].path, load_target(profile))
    assert result.latency.mean_ms == 33.2094 and result.latency.p50_ms is None
    assert result.manifest["device_serial"] == "FAKE01" and result.manifest["device_model"] == "Pixel 8"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["-s", "FAKE01", "push", str(binary), "/data/local/tmp/edgekd/benchmark_model"] in calls
    run = next(c for c in calls if "benchmark_model --graph=" in c[-1])
    assert "--num_threads=4" in run[-1] and "--use_xnnpack=true" in run[-1]
    assert os.path.basename(str(exported[("int8", "tflite")].path)) not in " ".join(run)  # hash name on device


def test_shapes_are_refused_on_adb_targets(tmp_path, exported):
    """benchmark_model runs the model's stored input shapes: a --shape is an error, not ignored."""
    from edgekd.bench import benchmark_on_target
    from edgekd.errors import ConfigError
    from edgekd.targets import load_target

    profile = tmp_path / "pixel.yaml"
    profile.write_text(f"name: pixel\nconnection: adb\nadb: {{adb: {tmp_path / 'adb'}, benchmark_model: "
                       f"{tmp_path / 'bm'}}}\nruntimes: {{litert: {{}}}}\n")
    with pytest.raises(ConfigError, match=r"target 'pixel' runs LiteRT's benchmark_model over adb.*"
                                          r"\(sequence\) cannot be passed there"):
        benchmark_on_target(exported[("int8", "tflite")].path, load_target(profile), shapes={"sequence": 16})
