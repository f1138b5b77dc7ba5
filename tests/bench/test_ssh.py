"""Benchmarks over ssh, against a real OpenSSH server on 127.0.0.1 with a throwaway key.

`.ci/run` installs Debian's openssh-server; the test starts its own sshd (own config, host key and
authorized key in a temporary folder, a free port), so nothing of the machine's ssh setup is used.
"""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekd.bench.ssh import SshConfig

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
pytestmark = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None,
                                reason="openssh-server and client: installed by .ci/run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd on 127.0.0.1 that accepts a fresh key for the current user."""
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # privilege separation dir
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin yes",
        f"PidFile {folder / 'sshd.pid'}", f"SetEnv PATH={os.environ['PATH']}", ""]))
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()[-500:]}")
    ssh = SshConfig(host="127.0.0.1", port=port, user=getpass.getuser(), identity_file=str(folder / "client"),
                    python=sys.executable, workdir=str(folder / "remote"),
                    options=["StrictHostKeyChecking=no", f"UserKnownHostsFile={folder / 'known_hosts'}"])
    yield ssh, folder
    proc.terminate()
    proc.wait(timeout=10)


def _profile(tmp_path, ssh: SshConfig) -> Path:
    path = tmp_path / "lab-box.yaml"
    options = "".join(f"\n    - {o}" for o in ssh.options)
    optional = "".join(f"\n  {k}: {getattr(ssh, k)}" for k in ("user", "identity_file") if getattr(ssh, k))
    path.write_text(f"""name: lab-box
connection: ssh
ssh:
  host: {ssh.host}
  port: {ssh.port}{optional}
  python: {ssh.python}
  workdir: {ssh.workdir}
  options:{options}
threads: 1
runtimes: {{onnxruntime: {{}}, openvino: {{}}}}
benchmark: {{warmup_runs: 2, min_runs: 20, min_seconds: 0.05}}
""")
    return path


def test_bench_over_ssh_runs_the_child_remotely(sshd, exported, tmp_path):
    from edgekd.bench import benchmark_on_target
    from edgekd.targets import load_target

    ssh, folder = sshd
    target = load_target(_profile(tmp_path, ssh))
    for fmt in ("onnx", "openvino"):  # an IR travels with its .bin
        result = benchmark_on_target(exported[("int8", fmt)].path, target)
        assert result.latency.n >= 20 and result.latency.p50_ms > 0
        remote = result.manifest["remote"]
        assert remote["host"] == "127.0.0.1" and remote["port"] == ssh.port and remote["serial"]
        assert remote["uname"].startswith("Linux")
    assert list((folder / "remote").iterdir()) == []  # copies removed


def test_cli_bench_over_ssh(sshd, exported, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    ssh, _ = sshd
    result = CliRunner().invoke(main, ["bench", str(exported[("int8", "onnx")].path), "--target",
                                       str(_profile(tmp_path, ssh))], catch_exceptions=False)
    assert result.exit_code == 0 and "target=lab-box" in result.output and "p50" in result.output


def test_file_names_cannot_inject_shell_code(sshd, exported, tmp_path):
    """A hostile artifact name travels as data: the remote copy gets a hash name, every word is quoted."""
    from edgekd.bench import benchmark_on_target
    from edgekd.targets import load_target

    ssh, folder = sshd
    marker = f"edgekd-pwned-{os.getpid()}"
    hostile = tmp_path / f"x'; touch {marker}; echo '$(touch {marker})`touch {marker}`.onnx"
    shutil.copyfile(exported[("int8", "onnx")].path, hostile)
    result = benchmark_on_target(hostile, load_target(_profile(tmp_path, ssh)))
    assert result.latency.n >= 20
    for place in (Path.home(), Path.cwd(), tmp_path, folder / "remote"):
        assert not (place / marker).exists(), place


def test_target_fields_cannot_inject_shell_code(sshd, exported, tmp_path):
    """A profile's workdir is quoted as one word on the remote side: the odd folder is created, nothing runs."""
    import dataclasses

    from edgekd.bench import benchmark_on_target
    from edgekd.targets import load_target

    ssh, folder = sshd
    marker = f"edgekd-pwned-wd-{os.getpid()}"
    workdir = folder / f"w $(touch {marker}) `touch {marker}`; touch {marker}"
    profile = _profile(tmp_path, dataclasses.replace(ssh, workdir=f"'{workdir}'"))
    result = benchmark_on_target(exported[("int8", "onnx")].path, load_target(profile))
    assert result.latency.n >= 20
    assert workdir.is_dir()  # the literal name, as a folder
    for place in (Path.home(), Path.cwd(), tmp_path, folder, workdir):
        assert not (place / marker).exists(), place


def test_an_unreachable_host_is_a_clear_error(tmp_path, exported):
    from edgekd.bench import benchmark_on_target
    from edgekd.errors import BenchmarkError
    from edgekd.targets import load_target

    ssh = SshConfig(host="127.0.0.1", port=_free_port(), options=["ConnectTimeout=5"], timeout_s=30)
    with pytest.raises(BenchmarkError, match=r"could not create /tmp/edgekd-bench on 127\.0\.0\.1:\d+ .*refused"):
        benchmark_on_target(exported[("int8", "onnx")].path, load_target(_profile(tmp_path, ssh)))
