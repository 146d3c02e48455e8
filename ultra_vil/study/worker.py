"""One (model, seed) run in its own process, `python -m ultra_vil.study.worker JOB.json`: started by run_worker,
tied to its parent (die_with_parent), it trains, validates last.pt and times inference."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ultra_vil.study.locks import RunLock

# Nothing from ultra_vil at import, and torch, Ultralytics and ultra_vil.yolo only inside the functions: the module's
# own code ties the job to its parent (die_with_parent) before it imports anything heavy, whatever imported it
# (tests/test_study_locks.py runs this file alone and stops the job at `import torch`). Launched as
# `python -m ultra_vil.study.worker`, Python imports the packages ultra_vil (which loads torch) and ultra_vil.study
# first; ultra_vil.study does not import this module, so that it runs once, as __main__.
NA = "n/a"  # ultra_vil.study.stats.NA, the cell of a value that cannot apply


def resolve_device(device: str) -> str:
    """ultra_vil.device.resolve_device as the string settings.json stores: 'cpu' or 'cuda:N' ('auto' -> 'cuda:0'
    or 'cpu'). Its DeviceError is a UserError."""
    from ultra_vil.device import resolve_device as resolve

    return str(resolve(device))


def register_vil(required: bool) -> bool:
    """Import ultra_vil.yolo so that Ultralytics' parser knows the ViL modules (the .pth hook does it too)."""
    try:
        import ultra_vil.yolo  # noqa: F401
    except ImportError as e:
        if required:
            from ultra_vil.errors import UserError

            raise UserError(
                f"cannot import ultra_vil.yolo ({e}); ViL models need it. Install the package with "
                "`pip install -e .` from the repository root."
            ) from e
        return False
    return True


def run_worker(job: dict, job_file: Path, log_file: Path, quiet: bool,
               lock: RunLock | None = None) -> tuple[bool, str]:  # fmt: skip
    """Run one job in a fresh Python process; its output goes to log_file (and the console unless quiet).

    The job process is tied to this one: it inherits the run's `lock`, which from then on names it (it writes the
    run) and stays held while it lives, even if this process is gone; it is told this process's pid and dies with
    it (die_with_parent). If this process stops here (Ctrl-C, an error), the job process is killed and waited for
    before the caller releases the lock, so no other process can start the run while this one still writes it.
    """
    job = {**job, "parent_pid": os.getpid()}
    job_file.write_text(json.dumps(job, indent=2))
    Path(job["row_file"]).unlink(missing_ok=True)
    for stale in (f"{job['tag']}_seed{job['seed']}", f"{job['tag']}_seed{job['seed']}_val"):
        shutil.rmtree(Path(job["out_dir"]) / "runs" / stale, ignore_errors=True)  # an interrupted run starts afresh
    cmd = [sys.executable, "-m", "ultra_vil.study.worker", "--worker", str(job_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(lock.fd,) if lock is not None else ())  # fmt: skip
        try:
            if lock is not None:
                lock.name(proc.pid)
            while chunk := proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
                log.write(chunk)
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc == 0 and Path(job["row_file"]).is_file():
        return True, ""
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    return False, f"exit status {rc}; see {log_file}: " + " | ".join(x.strip()[:200] for x in tail)


def worker_main(job_file: str) -> int:
    """The job process (`python -m ultra_vil.study.worker --worker JOB.json`, started by run_worker): tied to
    its parent first, then `worker`."""
    job = json.loads(Path(job_file).read_text())
    if job.get("parent_pid"):
        die_with_parent(int(job["parent_pid"]))
    return worker(job)


def die_with_parent(parent: int, poll_s: float = 1.0) -> str:
    """Make this process (a job) exit when `parent`, the compare.py process that started it, dies: "prctl" or
    "poll", how.

    An orphaned job would go on training while a rerun, finding its parent gone, takes the run over and deletes
    the run folder the orphan writes into. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) through ctypes, the kernel's
    own notice (sent when the thread that started this process ends: compare.py starts jobs from its main
    thread). Elsewhere, or where prctl fails: a daemon thread that polls os.getppid() every `poll_s` seconds and
    exits once it has changed (an orphan is given a new parent). If this process's parent is not `parent` to begin
    with, a launcher stands between them (an interpreter wrapper that does not exec) or `parent` is gone already:
    the thread then polls whether `parent` lives. Either way the parent is checked once more right after, for one
    that died before the watch was set up.
    """
    if os.getppid() == parent:
        def alive() -> bool:
            return os.getppid() == parent

        how = "prctl" if _set_pdeathsig(signal.SIGKILL) else "poll"
    else:
        def alive() -> bool:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # alive, another user's
                pass
            return True

        how = "poll"
    if how == "poll":
        import threading

        def watch() -> None:
            while alive():
                time.sleep(poll_s)
            os._exit(1)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    if not alive():
        os._exit(1)
    return how


def _set_pdeathsig(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) for this process; False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------------ worker
def worker(job: dict) -> int:
    """Train, validate and time one (model, seed). Writes job['row_file'] last, atomically."""
    import torch

    from ultra_vil.device import device_name, ultralytics_device

    if job["vil"]:
        register_vil(required=True)
    yolo_device = ultralytics_device(job["device"])
    notes: dict[str, str] = {}
    save_dir, epoch_times, peak = _train(job, yolo_device)
    last = save_dir / "weights" / "last.pt"
    params, gflops = _size(last, job, notes)
    box, names = _validate(last, job, yolo_device)
    row: dict[str, Any] = {
        "model": job["tag"], "seed": job["seed"], "params": params, "gflops": round(gflops, 4) if gflops != NA else NA,
        "map50": float(box.map50), "map50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
    }  # fmt: skip
    _latencies(last, job, row, notes)
    row["train_s_per_epoch"] = round(statistics.median(epoch_times), 3) if epoch_times else NA
    if not epoch_times:
        notes["train_s_per_epoch"] = "no epoch finished"
    row["peak_mem_mb"] = round(peak, 1) if peak is not None else NA
    if peak is None:
        notes["peak_mem_mb"] = "no peak-RSS reading on this OS (needs Linux /proc)"
    _per_class(box, names, row, notes)

    env = {
        "torch": torch.__version__, "ultralytics": __import__("ultralytics").__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "device_name": device_name(torch.device(job["device"])),
        "epochs_timed": len(epoch_times), "save_dir": str(save_dir),
    }  # fmt: skip
    saved = {"row": row, "notes": notes, "names": names, "yaml_sha": job["yaml_sha"], "env": env}
    from ultra_vil.checkpoints import atomic_write

    atomic_write(job["row_file"], json.dumps(saved, indent=2))
    return 0


def _train(job: dict, yolo_device) -> tuple[Path, list[float], float | None]:
    """Train the job's model from scratch: (its run folder, each epoch's training-loop seconds, peak memory in MB
    or None where the OS gives no reading)."""
    from ultralytics import YOLO

    from ultra_vil.bench.memory import peak_memory

    model = YOLO(job["cfg"])
    epoch_times, t_start = [], [0.0]
    model.add_callback("on_train_epoch_start", lambda trainer: t_start.__setitem__(0, time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda trainer: epoch_times.append(time.perf_counter() - t_start[0]))
    # CUDA: allocator peak above the start; CPU: the process's peak RSS (VmHWM, reset here) above its RSS now
    with peak_memory(job["device"]) as peak_mem:
        model.train(
            data=job["data"], epochs=job["epochs"], imgsz=job["img_size"], batch=job["batch_size"], seed=job["seed"],
            deterministic=True, optimizer=job["optimizer"], lr0=job["lr0"], device=yolo_device,
            workers=job["workers"], project=str(Path(job["out_dir"]) / "runs"), name=_run_name(job), exist_ok=True,
            pretrained=False,
            **{"plots": False, "val": False, **job["extra"]},  # --extra val=True: a val curve in results.csv
        )  # fmt: skip
    return Path(model.trainer.save_dir), epoch_times, peak_mem.mb


def _run_name(job: dict) -> str:
    """The run's folder under out_dir/runs (its validation writes to the same name + "_val")."""
    return f"{job['tag']}_seed{job['seed']}"


def _size(last: Path, job: dict, notes: dict) -> tuple[int, float | str]:
    """(parameters, GFLOPs or n/a) of the model as trained (nc of the data set), before BN fusion."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    trained = YOLO(last).model.float()
    params = sum(p.numel() for p in trained.parameters())
    gflops = get_flops(trained, job["img_size"])
    if not gflops:
        gflops, notes["gflops"] = NA, "Ultralytics' get_flops (thop) failed on this model"
    return params, gflops


def _validate(last: Path, job: dict, yolo_device):
    """Ultralytics' val of last.pt on the val split: (its box metrics, the class names in index order)."""
    from ultralytics import YOLO

    metrics = YOLO(last).val(
        data=job["data"], imgsz=job["img_size"], batch=job["batch_size"], device=yolo_device, workers=job["workers"],
        split="val", plots=False, project=str(Path(job["out_dir"]) / "runs"), name=f"{_run_name(job)}_val",
        exist_ok=True,
    )  # fmt: skip
    return metrics.box, [metrics.names[i] for i in sorted(metrics.names)]


def _latencies(last: Path, job: dict, row: dict, notes: dict) -> None:
    """Latency, batch 1: the fused fp32 model's forward (no pre/post-processing, no NMS), median after warm-up, in
    PyTorch on the job's device and (unless --no-onnx) in ONNX Runtime on the CPU, into `row`."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    x = torch.rand(1, 3, job["img_size"], job["img_size"])
    net = YOLO(last).model.float().fuse().eval().to(job["device"])
    row["latency_ms_torch"] = round(time_ms(lambda: net(x.to(job["device"])), job), 3)
    if not job["onnx"]:
        row["latency_ms_onnx"], notes["latency_ms_onnx"] = NA, "not measured (--no-onnx)"
    else:
        row["latency_ms_onnx"], why = onnx_latency(last, x, job)
        if why:
            notes["latency_ms_onnx"] = why


def _per_class(box, names: list[str], row: dict, notes: dict) -> None:
    """AP50 and AP50-95 of every class into `row` (ap50_<name>, ap50_95_<name>); n/a for a class without val
    instances."""
    present = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for c, n in enumerate(names):
        row[f"ap50_{n}"] = float(box.all_ap[present[c], 0]) if c in present else NA
    for c, n in enumerate(names):
        row[f"ap50_95_{n}"] = float(box.all_ap[present[c]].mean()) if c in present else NA
    absent = [n for c, n in enumerate(names) if c not in present]
    if absent:
        notes["per_class"] = f"no val instances of {absent}: their AP is n/a"


def time_ms(fn, job: dict) -> float:
    """Median batch-1 latency in ms after the job's warm-up runs (ultra_vil.bench.timing, CUDA synchronised)."""
    import torch

    from ultra_vil.bench import timing

    with torch.inference_mode():
        return timing.time_ms(fn, job["device"], warmup=job["latency_warmup"], repeat=job["latency_runs"])


def onnx_latency(last: Path, x, job: dict) -> tuple[float | str, str]:
    """(median ms, "") or (n/a, why): Ultralytics' ONNX export of last.pt, run by ONNX Runtime on the CPU on the
    CPU tensor x (1, 3, img_size, img_size), opened by ultra_vil.yolo.costs.ort_session and timed like PyTorch."""
    try:
        from ultralytics import YOLO

        from ultra_vil.bench import timing
        from ultra_vil.yolo.costs import ort_session

        onnx_file = YOLO(last).export(format="onnx", imgsz=job["img_size"], device="cpu", dynamic=False)
        run, _ = ort_session(onnx_file, x.cpu())
        ms = timing.time_ms(run, None, warmup=job["latency_warmup"], repeat=job["latency_runs"])
        return round(ms, 3), ""
    except Exception as e:  # export or runtime failure: report it, keep the rest of the row
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = msg if len(msg) <= 200 else msg[:200] + " ..."
        return NA, f"ONNX export or ONNX Runtime failed ({type(e).__name__}: {msg}); the full error is in the run's log"


if __name__ == "__main__":  # a job process: python -m ultra_vil.study.worker [--worker] JOB.json
    job_args = sys.argv[2:] if sys.argv[1:2] == ["--worker"] else sys.argv[1:]
    if len(job_args) != 1 or job_args[0].startswith("-"):
        raise SystemExit("usage: python -m ultra_vil.study.worker [--worker] JOB.json (started by scripts/compare.py)")
    sys.exit(worker_main(job_args[0]))
