"""A throwaway single-node SLURM cluster for tests: Debian's slurm-wlm and munge, daemons started directly.

`start(root)` writes a munge key and a `slurm.conf` for this host under `root`, starts munged, slurmctld and slurmd
(no systemd), waits until `sinfo` shows the node idle, and returns a `Cluster` whose `env` has `SLURM_CONF` set;
`Cluster.stop()` stops the daemons by their pid files. Every failure raises `Unavailable` with the command that
failed, its exit status and the last line of its error output, which the pytest fixture turns into a skip reason.

By hand (root):  python tests/slurm/cluster.py /tmp/slurm   # starts it and prints the two exports to use it
                 python tests/slurm/cluster.py /tmp/slurm --stop
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol")
PARTITION = "debug"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


class Unavailable(RuntimeError):
    """SLURM cannot run here; the message says precisely why (command, exit status, error line)."""


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _run(cmd: list[str], timeout: float = 30, env: dict | None = None) -> str:
    """Run `cmd`; raise Unavailable naming it and its error line when it fails or times out."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`{' '.join(cmd)}` timed out after {timeout:.0f} s") from None
    except OSError as error:
        raise Unavailable(f"`{' '.join(cmd)}` could not start: {error}") from None
    if proc.returncode != 0:
        raise Unavailable(f"`{' '.join(cmd)}` exited {proc.returncode}: {_last_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def ensure_installed(timeout: float = 240) -> None:
    """Install slurm-wlm and munge with apt-get when they are missing and this process may (root, apt present)."""
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise Unavailable(f"{', '.join(missing)} not installed, and not root to `apt-get install {' '.join(PACKAGES)}`")
    apt = which("apt-get")
    if apt is None:
        raise Unavailable(f"{', '.join(missing)} not installed, and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SBIN_PATH}
    deadline = time.monotonic() + timeout
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    try:
        _run(install, timeout=timeout, env=env)
    except Unavailable:  # a clean machine may have no package lists yet
        _run([apt, "update", "-q"], timeout=max(10.0, deadline - time.monotonic()), env=env)
        _run(install, timeout=max(10.0, deadline - time.monotonic()), env=env)
    if missing := missing_binaries():
        raise Unavailable(f"`apt-get install {' '.join(PACKAGES)}` succeeded but {', '.join(missing)} still not found")


def _free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free right now (so that a second test cluster on the machine does not collide)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def slurm_conf(root: Path, host: str, cpus: int, mem_mb: int, ports: tuple[int, int]) -> str:
    """A minimal single-node slurm.conf: root runs everything, no cgroups, no accounting, all state under `root`."""
    return f"""\
ClusterName=modgap-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
KillWait=5
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    root: Path
    env: dict = field(default_factory=dict)  # os.environ plus SLURM_CONF (and the sbin PATH)
    partition: str = PARTITION
    cpus: int = 1
    mem_mb: int = 1024

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged by their pid files (TERM, then KILL after 10 s)."""
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pidfile
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            _kill(pid)

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(
            f"{p.name}: {line}" for p in sorted((self.root / "log").glob("*.log"))
            for line in p.read_text(errors="replace").splitlines()[-n:]
        )


def _kill(pid: int, wait_s: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(root: str | Path, install_timeout: float = 240, ready_timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd for this host under `root`; raise Unavailable with the reason if not."""
    if sys.platform != "linux":
        raise Unavailable(f"needs Linux, not {sys.platform}")
    if os.geteuid() != 0:
        raise Unavailable("needs root: slurmd runs jobs as their submitting user and must run as root")
    ensure_installed(install_timeout)
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for p in (root, root / "munge"):  # munged wants its socket folder traversable
        p.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    cluster = Cluster(root, cpus=os.cpu_count() or 1, mem_mb=max(512, int(_mem_mb() * 0.9)))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, cluster.cpus, cluster.mem_mb, tuple(_free_ports(2))))
    # snakemake-executor-plugin-slurm-jobstep 0.6 drops every SLURM_* variable but the job's identity from the
    # environment of its inner `srun`, SLURM_CONF included, so srun looks for /etc/slurm/slurm.conf (or DNS SRV
    # records). Real clusters keep slurm.conf there; this one lives in a temp folder, so an `srun` wrapper first on
    # PATH (which jobs inherit through sbatch --export=ALL) puts SLURM_CONF back.
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "srun"
    wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {which("srun")} "$@"\n')
    wrapper.chmod(0o755)
    cluster.env = {**os.environ, "SLURM_CONF": str(conf), "PATH": os.pathsep.join([str(bin_dir), SBIN_PATH])}
    key = root / "munge" / "munge.key"
    if not key.exists():
        _run([which("mungekey"), "--create", f"--keyfile={key}"])
    key.chmod(0o400)
    m = root / "munge"
    try:
        # as root: --force accepts root ownership and the temp folder's permissions
        _run([which("munged"), "--force", f"--key-file={key}", f"--socket={m}/munge.socket",
              f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        _run([which("slurmctld"), "-f", str(conf)], env=cluster.env)
        _run([which("slurmd"), "-f", str(conf)], env=cluster.env)
        _wait_idle(cluster, ready_timeout)
    except Unavailable:
        cluster.stop()
        raise
    return cluster


def _wait_idle(cluster: Cluster, timeout: float) -> None:
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        proc = subprocess.run([which("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True, env=cluster.env)
        state = (proc.stdout or proc.stderr).strip()
        if proc.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    raise Unavailable(f"`sinfo -h -o %t` still says {state!r} after {timeout:.0f} s, not idle; daemon logs:\n"
                      f"{cluster.log_tail(5)}")


def job_records(cluster: Cluster, name: str | None = None) -> list[dict[str, str]]:
    """Jobs slurmctld still knows (finished ones for MinJobAge=600 s): `scontrol show job` records as dicts."""
    out = _run([which("scontrol"), "show", "job", "--oneliner"], env=cluster.env)
    records = []
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields and (name is None or fields.get("JobName") == name):
            records.append(fields)
    return records


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/modgap-slurm")
    if "--stop" in sys.argv:
        Cluster(where).stop()
    else:
        c = start(where)
        print(f"export SLURM_CONF={c.env['SLURM_CONF']} PATH={c.root / 'bin'}:$PATH")
