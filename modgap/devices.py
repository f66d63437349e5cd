"""Which device a job runs on and, on a machine with several GPUs, which GPU: a per-job lock file per GPU.

Snakemake limits how many GPU jobs run at once (each GPU rule declares the resource `gpu=1`; `--resources gpu=N`
caps their sum), but it does not say *which* GPU a job gets: every local job sees every GPU and would use cuda:0.
`claim_gpu` picks one. It takes an exclusive, non-blocking `fcntl.flock` on `<lock dir>/gpu<k>.lock` for the first
k whose lock is free, holds it for the job's lifetime, and waits (polling) while all are taken. The operating
system drops a flock when its process dies, so a killed or crashed job never leaves a GPU locked; the lock files
themselves stay (they hold the last holder's pid and host, for humans) and are reused.

- GPUs counted: `torch.cuda.device_count()`, which honours CUDA_VISIBLE_DEVICES; the environment variable
  MODGAP_FAKE_GPUS=<n> replaces it (tests, and to cap the GPUs a run may use). No GPU: nothing is locked, the job
  runs on the CPU.
- Lock files are named after the physical GPU (the CUDA_VISIBLE_DEVICES entry when it is set), so runs that see
  different subsets of the GPUs still exclude each other; the index returned is the one to use in this process.
- Lock folder: MODGAP_GPU_LOCK_DIR, else `<system temp>/modgap-gpu-locks`, shared by every run on the machine.
- Under SLURM (SLURM_JOB_ID set) the locks live in a sub-folder of that job: jobs submitted by the slurm executor
  each get their own GPU from SLURM (CUDA_VISIBLE_DEVICES) and never wait on one another, while local jobs inside
  one allocation (`salloc --gpus=4`, then a local snakemake) still spread over its GPUs.

Use in a job script (the states, metrics and interventions rules):

    from modgap.devices import job_device
    with job_device(requested) as device:      # requested: "auto" | "cpu" | "cuda" | "cuda:1" ...
        model.to(device)                       # "cpu", or "cuda:<k>" while this job holds GPU k
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

FAKE_ENV = "MODGAP_FAKE_GPUS"
LOCK_DIR_ENV = "MODGAP_GPU_LOCK_DIR"
log = logging.getLogger("modgap.devices")


def resolve_device(requested: str = "auto") -> str:
    """`auto` -> "cuda" when torch sees a GPU, else "cpu"; anything else is returned as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_count() -> int:
    """GPUs this process may use: MODGAP_FAKE_GPUS when set, else torch.cuda.device_count() (0 without CUDA)."""
    if (fake := os.environ.get(FAKE_ENV)) is not None:
        return int(fake)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lock_dir(base: str | Path | None = None) -> Path:
    """Folder of the lock files: `base`, else MODGAP_GPU_LOCK_DIR, else the system temp folder's
    modgap-gpu-locks; inside a SLURM job, its sub-folder slurm-<job id>."""
    root = Path(base or os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "modgap-gpu-locks")
    if job := os.environ.get("SLURM_JOB_ID"):
        root = root / f"slurm-{job}"
    return root


def _physical_ids(n: int) -> list[str]:
    """Names of the n visible GPUs for lock files: CUDA_VISIBLE_DEVICES entries when set, else 0..n-1."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    names = visible[:n] if len(visible) >= n else [str(k) for k in range(n)]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", name) for name in names]


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
        return os.open(path, os.O_RDONLY)


@contextlib.contextmanager
def claim_gpu(base: str | Path | None = None, n_devices: int | None = None,
              poll_s: float = 1.0) -> Iterator[int | None]:
    """Hold one free GPU for the duration: yields its index in this process (use `cuda:<index>`), or None when
    there is no GPU. Waits, polling every `poll_s` seconds, while every GPU is held by another job.
    `n_devices` defaults to `gpu_count()`; `base` to `lock_dir()`'s choice."""
    n = gpu_count() if n_devices is None else n_devices
    if n <= 0:
        yield None
        return
    folder = lock_dir(base)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the machine
        folder.chmod(0o1777)
    names, waited = _physical_ids(n), time.monotonic()
    announced = False
    while True:
        for k, name in enumerate(names):
            fd = _open_lock(folder / f"gpu{name}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                if announced:
                    log.info("got GPU %d (%s) after waiting %.0f s", k, name, time.monotonic() - waited)
                else:
                    log.info("using GPU %d (%s), locked in %s", k, name, folder)
                yield k
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if not announced:
            log.info("all %d GPUs are held by other jobs (locks in %s); waiting", n, folder)
            announced = True
        time.sleep(poll_s)


@contextlib.contextmanager
def job_device(requested: str = "auto", base: str | Path | None = None) -> Iterator[str]:
    """The torch device a job should use, held for the duration: `requested` resolved ("auto" -> cuda or cpu);
    a bare "cuda" becomes "cuda:<k>" for a GPU claimed with `claim_gpu`; "cpu" or an explicit "cuda:<k>" is used
    as given, without locking."""
    device = resolve_device(requested)
    if device != "cuda":
        yield device
        return
    with claim_gpu(base) as k:
        if k is None:
            yield device
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(k)
        yield f"cuda:{k}"
