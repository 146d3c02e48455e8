"""Which torch device a user's `--device` string names: the one resolver of training, the study and the benchmark.

`resolve_device` turns 'auto', 'cpu', 'cuda', 'cuda:N' or Ultralytics' 'N' into a torch.device and refuses what this
machine cannot run (`DeviceError`); `ultralytics_device` spells a device the way Ultralytics' `device=` wants it;
`device_name` names the hardware for reports. Imports only torch, the standard library and ultra_vil.errors.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from ultra_vil.errors import UserError


class DeviceError(UserError, RuntimeError):
    """A device string that is malformed or names hardware this machine does not have.

    A UserError (the CLIs print it as one line) and a RuntimeError (what callers of the training code catch).
    """


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The torch.device for a user's device string.

    'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' -> cuda:<local_rank>; 'cpu'; 'cuda:N';
    and Ultralytics' single-device form 'N' (= cuda:N). Several devices ('0,1') are refused: one process drives
    one device here, and torchrun (or Ultralytics' own DDP launcher) starts one process per device.

    Raises:
        DeviceError: malformed, no CUDA on this machine, or N beyond the visible devices.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = str(spec).strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return torch.device("cpu")
    if "," in s:
        raise DeviceError(f"--device {spec}: several devices; give one (cpu, cuda, cuda:N or N); for several GPUs "
                          "start one process per device with torchrun")  # fmt: skip
    m = re.fullmatch(r"(?:cuda(?::(\d+))?|(\d+))", s)
    if not m:
        raise DeviceError(f"--device must be auto, cpu, cuda, cuda:N or N, got {spec!r}")
    number = m.group(1) or m.group(2)  # None for a bare 'cuda'
    index = int(number) if number is not None else local_rank
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: CUDA is not available on this machine")
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def ultralytics_device(device: torch.device | str) -> str:
    """Ultralytics' spelling of one device: 'cpu' or the CUDA index ('0'), as its `device=` argument wants."""
    device = torch.device(device)
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def device_name(device: torch.device) -> str:
    """A human name for the report: the GPU's name, else the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
