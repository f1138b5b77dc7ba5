"""Benchmark on a remote host over ssh (a Raspberry Pi, a Jetson, an x86 box in a lab).

The artifact is streamed through ssh (``cat > file`` on the host; no sftp/scp subsystem needed)
to ``workdir`` under a name edgekd chooses (a hash of its content plus its suffix, never the
local file name), then the same child process that measures
local runs (``python -m edgekd.bench.child '<request>'``) runs there with the remote host's
runtime, and its one JSON line comes back. The remote host needs Python with edgekd and the
runtime installed (``pip install edgekd``; a device that runs LiteRT only needs
``ai-edge-litert`` too). Every word of every remote command is quoted with ``shlex.quote``:
file names and profile fields cannot inject shell code.

Profile section (``connection: ssh``)::

    ssh:
      host: raspberrypi.local
      user: pi
      port: 22
      identity_file: ~/.ssh/id_ed25519
      python: python3                 # the remote interpreter that has edgekd installed
      workdir: /tmp/edgekd-bench
      options: [StrictHostKeyChecking=accept-new]   # passed as ssh -o
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.config import Config, FieldError
from edgekd.errors import BenchmarkError, RuntimeBackendError
from edgekd.hashing import content_name


@dataclass
class SshConfig(Config):
    """How to reach a remote host (see the module docstring).

    Attributes:
        host: host name or address.
        user: login user (default: ssh's default).
        port: ssh port.
        identity_file: private key file (default: ssh's default keys and agent).
        python: the remote Python that has edgekd and the runtime installed.
        workdir: remote folder for copied artifacts (created if missing).
        options: extra ``ssh -o`` options, e.g. ``StrictHostKeyChecking=accept-new``.
        timeout_s: seconds before a copy or a remote command is abandoned.
    """

    host: str
    user: str | None = None
    port: int = 22
    identity_file: str | None = None
    python: str = "python3"
    workdir: str = "/tmp/edgekd-bench"
    options: list[str] = field(default_factory=list)
    timeout_s: float = 600.0

    def __post_init__(self):
        if not self.host or self.host.startswith("-"):
            raise FieldError("host", f"expected a host name or address, got {self.host!r}")
        if self.user is not None and (not self.user or self.user.startswith("-") or "@" in self.user):
            raise FieldError("user", f"expected a user name, got {self.user!r}")
        if not 0 < self.port < 65536:
            raise FieldError("port", f"expected a TCP port, got {self.port}")
        for i, option in enumerate(self.options):
            if "=" not in option or option.startswith("-"):
                raise FieldError(f"options.{i}", f"expected key=value (an ssh -o option), got {option!r}")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_command(self, remote_words: list[str]) -> list[str]:
        """``ssh ... -- host '<quoted words>'``: the remote shell sees each word exactly."""
        cmd = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes"]  # never prompt (no stdin in CI)
        if self.identity_file:
            cmd += ["-i", str(Path(self.identity_file).expanduser())]
        for option in self.options:
            cmd += ["-o", option]
        return cmd + ["--", self.destination, shlex.join(remote_words)]



def remote_name(path: Path) -> str:
    """The name an artifact gets on the remote host: content hash + suffix (never the local name)."""
    return content_name(path)


def _run(cmd: list[str], what: str, timeout: float, stdin_file: Path | None = None) -> subprocess.CompletedProcess:
    try:
        if stdin_file is not None:
            with open(stdin_file, "rb") as source:
                proc = subprocess.run(cmd, capture_output=True, stdin=source, timeout=timeout, check=False)
            proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeBackendError(f"{cmd[0]} is not installed here; it is needed to {what}") from None
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"timed out after {timeout:.0f} s trying to {what}") from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:500]
        raise BenchmarkError(f"could not {what} (exit code {proc.returncode}): {tail or 'no output'}")
    return proc


def run_remote_child(path: Path, request: dict, ssh: SshConfig, threads: int) -> dict:
    """Copy ``path`` (and an IR's .bin) to the host, run the benchmark child there, return its
    JSON result (with ``remote`` facts added). The copies are removed afterwards."""
    path = Path(path)
    name = remote_name(path)
    remote = f"{ssh.workdir.rstrip('/')}/{name}"
    files = [(path, remote)]
    if path.suffix.lower() == ".xml":  # OpenVINO IR: the weights travel along, same stem
        files.append((path.with_suffix(".bin"), remote[:-4] + ".bin"))
    where = f"{ssh.destination}:{ssh.port}"
    _run(ssh.ssh_command(["mkdir", "-p", ssh.workdir]), f"create {ssh.workdir} on {where}", ssh.timeout_s)
    try:
        for local, target in files:  # streamed through ssh: no sftp/scp subsystem needed
            _run(ssh.ssh_command(["sh", "-c", 'cat > "$1"', "sh", target]), f"copy {local} to {where}",
                 ssh.timeout_s, stdin_file=local)
        request = {**request, "path": remote}
        words = ["env", f"OMP_NUM_THREADS={threads}", ssh.python, "-m", "edgekd.bench.child", json.dumps(request)]
        proc = subprocess.run(ssh.ssh_command(words), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=ssh.timeout_s, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:500]
            raise BenchmarkError(f"{path}: the benchmark on {where} returned no result (exit code "
                                 f"{proc.returncode}: {tail or 'no output'}); the remote Python "
                                 f"({ssh.python}) needs edgekd and the runtime installed")
        result = json.loads(lines[-1])
        facts = _run(ssh.ssh_command(["sh", "-c", "uname -srm; cat /etc/machine-id 2>/dev/null || hostname"]),
                     f"read the identity of {where}", ssh.timeout_s).stdout.strip().splitlines()
        result.setdefault("manifest", {})["remote"] = {
            "host": ssh.host, "port": ssh.port, "user": ssh.user, "uname": facts[0] if facts else "",
            "serial": facts[1] if len(facts) > 1 else "", "python": ssh.python}
        return result
    finally:
        subprocess.run(ssh.ssh_command(["rm", "-f", *[t for _, t in files]]), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=ssh.timeout_s, check=False)


__all__ = ["SshConfig", "remote_name", "run_remote_child"]
