"""edgekd.targets: target profiles by name or path, EDGEKD_TARGETS folders, profile errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edgekd.errors import ConfigError, UnknownNameError
from edgekd.targets import TargetProfile, list_targets, load_target

BUILTIN = Path(__file__).resolve().parents[1] / "targets"

PROFILE = textwrap.dedent("""\
    version: 1
    name: my-board
    description: test board
    threads: 2
    runtimes:
      onnxruntime:
        providers: [CPUExecutionProvider]
    benchmark:
      min_runs: 10
      min_seconds: 0.1
""")


@pytest.fixture(autouse=True)
def no_user_target_dirs(monkeypatch):
    monkeypatch.delenv("EDGEKD_TARGETS", raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_target(path)
    return str(info.value)


def test_list_targets_includes_builtins():
    names = [t.name for t in list_targets()]
    assert "x86-cpu" in names and "x86-cpu-mt" in names


def test_load_builtin_by_name():
    t = load_target("x86-cpu")
    assert isinstance(t, TargetProfile)
    assert (t.name, t.connection, t.device, t.threads) == ("x86-cpu", "local", "cpu", 1)
    assert t.runtime_options("onnxruntime") == {"providers": ["CPUExecutionProvider"]}
    assert t.runtime_options("openvino") == {"device": "CPU", "precision_hint": "f32"}
    assert t.runtime_options("not-listed") == {}
    assert (t.benchmark.warmup_runs, t.benchmark.min_runs, t.benchmark.max_seconds) == (20, 200, 30.0)


def test_load_by_path_equals_load_by_name():
    assert load_target(BUILTIN / "x86-cpu.yaml") == load_target("x86-cpu")
    assert load_target(str(BUILTIN / "x86-cpu-mt.yaml")).threads == 2


def test_load_user_profile_by_path(tmp_path):
    t = load_target(write(tmp_path / "board.yaml", PROFILE))
    assert (t.name, t.description, t.threads) == ("my-board", "test board", 2)
    assert list(t.runtimes) == ["onnxruntime"]
    assert (t.benchmark.min_runs, t.benchmark.min_seconds, t.benchmark.warmup_runs) == (10, 0.1, 20)


def test_unknown_name_suggests_nearest():
    with pytest.raises(UnknownNameError) as info:
        load_target("x86-cpy")
    assert str(info.value) == "unknown target 'x86-cpy'; did you mean 'x86-cpu'?; valid targets: arm-litert-xnnpack, ethos-u55, intel-npu, pixel-8-cpu, pixel-8-gpu, pixel-8-nnapi, qnn-htp, qnn-htp-a16, rpi5, snapdragon-qnn, x86-cpu, x86-cpu-mt, x86-cpu-vnni, x86-onnxruntime, x86-openvino"
    assert isinstance(info.value, ConfigError)


def test_missing_yaml_path(tmp_path):
    path = tmp_path / "none.yaml"
    assert load_error(path) == f"{path}: file not found"


def test_unknown_runtime_names_file_line_and_valid_runtimes(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("onnxruntime:", "onnxruntim:"))
    assert load_error(path) == (f"{path}:6: runtimes.onnxruntim: unknown runtime 'onnxruntim'; "
                                f"did you mean 'onnxruntime'?; valid runtimes: litert, onnxruntime, openvino")


def test_bad_field_type_names_file_and_line(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("threads: 2", "threads: two"))
    assert load_error(path) == f"{path}:4: threads: expected int, got str 'two'"


def test_bad_benchmark_value_names_nested_field(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("min_runs: 10", "min_runs: 0"))
    assert load_error(path) == f"{path}:9: benchmark.min_runs: must be >= 1, got 0"


def test_unsupported_connection(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE + "connection: bluetooth\n")
    assert load_error(path) == f"{path}:11: connection: expected one of 'local', 'ssh', 'adb', 'none', got 'bluetooth'"


def test_remote_connections_need_their_section(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE + "connection: ssh\n")
    assert "ssh: connection: ssh needs an `ssh:` section" in load_error(path)
    path = write(tmp_path / "c.yaml", PROFILE + "ssh: {host: pi.local}\n")
    assert "ssh: an `ssh:` section needs connection: ssh (this profile says local)" in load_error(path)
    path = write(tmp_path / "d.yaml", PROFILE + "connection: ssh\nssh: {host: '-oProxyCommand=touch x'}\n")
    assert "ssh.host: expected a host name or address" in load_error(path)


def test_threads_must_be_positive(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("threads: 2", "threads: 0"))
    assert load_error(path) == f"{path}:4: threads: must be >= 1, got 0"


def test_shapes_are_positive_axis_lengths(tmp_path):
    path = write(tmp_path / "s.yaml", PROFILE + "shapes: {sequence: 128, batch: 4}\n")
    assert load_target(path).shapes == {"sequence": 128, "batch": 4}
    path = write(tmp_path / "b.yaml", PROFILE + "shapes: {sequence: 0}\n")
    assert "shapes.sequence: expected a positive integer length, got 0" in load_error(path)
    path = write(tmp_path / "c.yaml", PROFILE + "shapes: {sequence: long}\n")
    assert "shapes" in load_error(path) and "long" in load_error(path)


def test_adb_targets_refuse_shapes(tmp_path):
    """benchmark_model runs a TFLite model's stored shapes: a length there would be ignored."""
    path = write(tmp_path / "a.yaml", "name: phone\nconnection: adb\nadb: {benchmark_model: ./bm}\n"
                                      "runtimes: {litert: {}}\nshapes: {sequence: 128}\n")
    assert "shapes: adb targets run benchmark_model on the model's stored input shapes" in load_error(path)


def test_newer_schema_version(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("version: 1", "version: 2"))
    assert load_error(path) == f"{path}:1: version: profile schema 2 is newer than this edgekd supports (1)"


def test_profile_without_name(tmp_path):
    path = write(tmp_path / "b.yaml", PROFILE.replace("name: my-board\n", ""))
    assert load_error(path) == f"{path}:1: (top level): missing 1 required positional argument: 'name'"


def test_edgekd_targets_adds_folders(tmp_path, monkeypatch):
    write(tmp_path / "a" / "my-board.yaml", PROFILE)
    write(tmp_path / "b" / "other-board.yaml", PROFILE.replace("name: my-board", "name: other-board"))
    with pytest.raises(UnknownNameError):
        load_target("my-board")
    monkeypatch.setenv("EDGEKD_TARGETS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "missing"),
                                                          str(tmp_path / "b")]))
    assert load_target("my-board").threads == 2
    assert load_target("other-board").name == "other-board"
    names = [t.name for t in list_targets()]
    assert {"my-board", "other-board", "x86-cpu", "x86-cpu-mt"} <= set(names)
    with pytest.raises(UnknownNameError, match="valid targets: arm-litert-xnnpack, ethos-u55, intel-npu, my-board, other-board, pixel-8-cpu, pixel-8-gpu, pixel-8-nnapi, qnn-htp, qnn-htp-a16, rpi5, snapdragon-qnn, x86-cpu, x86-cpu-mt, x86-cpu-vnni, x86-onnxruntime, x86-openvino$"):
        load_target("nope")


def test_broken_profile_in_target_folder_is_reported_by_list_targets(tmp_path, monkeypatch):
    path = write(tmp_path / "t" / "broken.yaml", PROFILE.replace("threads: 2", "threads: [2]"))
    monkeypatch.setenv("EDGEKD_TARGETS", str(tmp_path / "t"))
    with pytest.raises(ConfigError, match=rf"^{path}:4: threads: expected int"):
        list_targets()


def test_vnni_profile_refuses_a_cpu_without_vnni(monkeypatch):
    import edgekd.targets as targets

    monkeypatch.setattr(targets, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(ConfigError, match="needs a CPU with one of avx512_vnni, avx_vnni .* e.g. x86-cpu"):
        load_target("x86-cpu-vnni").require_reachable("benchmark")
    monkeypatch.setattr(targets, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    load_target("x86-cpu-vnni").require_reachable("benchmark")
    monkeypatch.setattr(targets, "cpu_flags", lambda: set())
    load_target("x86-cpu").require_reachable("benchmark")  # no flag needed


def test_every_shipped_remote_profile_is_complete():
    """The ssh, adb and estimate-only profiles the issue asks for load, with their sections."""
    profiles = {t.name: t for t in list_targets()}
    assert profiles["rpi5"].connection == "ssh" and profiles["rpi5"].ssh.host == "raspberrypi.local"
    for name in ("pixel-8-cpu", "pixel-8-gpu", "pixel-8-nnapi", "snapdragon-qnn"):
        assert profiles[name].connection == "adb" and set(profiles[name].runtimes) == {"litert"}
    assert {profiles[n].adb.delegate for n in ("pixel-8-cpu", "pixel-8-gpu", "pixel-8-nnapi")} == {"xnnpack", "gpu", "nnapi"}
    assert any("external_delegate_path" in f for f in profiles["snapdragon-qnn"].adb.extra_flags)
    assert profiles["intel-npu"].runtime_options("openvino")["device"] == "NPU"
    assert profiles["ethos-u55"].connection == "none" and profiles["ethos-u55"].compute is not None


def test_a_missing_npu_is_an_error_never_a_cpu_fallback(exported):
    from edgekd.bench import benchmark_on_target
    from edgekd.errors import RuntimeBackendError

    if "NPU" in __import__("openvino").Core().available_devices:
        pytest.skip("this machine has an NPU")
    with pytest.raises(RuntimeBackendError, match="device 'NPU' is not available"):
        benchmark_on_target(exported[("int8", "openvino")].path, load_target("intel-npu"))
