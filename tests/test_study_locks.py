"""compare.py's resumable runs without training: run locks, the job process's life, rows left by earlier runs.

Several compare.py processes may share one --out-dir; each (model, seed) is claimed by a lock file first. Here:
a stale lock is taken over by one contender only (the interleaving forced), a live holder is respected whatever
pid its file names, an empty lock is taken over, the job process dies with its parent and holds the lock while it
lives; a corrupt rows/*.json is trained again (or, with --report, named); the closing note names only runs that
the reports lack. The job processes here are stand-ins that sleep: no model is built.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import load_script

from ultra_vil import study as compare
from ultra_vil.study import runner

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="run locks are flocks, job processes POSIX ones")

ROOT = Path(__file__).resolve().parents[1]
COMPARE_PY = ROOT / "ultra_vil" / "study" / "worker.py"  # what `python -m ultra_vil.study.worker` runs
HOST = socket.gethostname()
script = load_script("compare")  # scripts/compare.py: main() as the command line runs it


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie whose new parent has not reaped it yet counts as exited)."""
    if not Path("/proc/self/stat").is_file():  # no /proc: ask the kernel (a zombie counts as alive here)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ------------------------------------------------------------------------------------------------------ locks
def test_a_stale_lock_is_taken_over_by_one_contender_only(tmp_path, monkeypatch):
    """Contender A reads a stale lock and checks its pid; before A takes over, B claims the same lock. Exactly one
    of them may hold the run (before, both did: A removed B's fresh lock and created its own)."""
    lock = tmp_path / "m_seed0.lock"
    lock.write_text(f"{dead_pid()} {HOST}")  # an older compare.py's lock: "PID HOST", its process gone
    real_kill, results = os.kill, {}

    def kill(pid, sig):  # A's liveness check of the stale pid: B runs its whole claim right here
        if "b" not in results:
            results["b"] = None  # once: B's own liveness check runs unhooked
            results["b"] = compare.claim(lock)
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    results["a"] = compare.claim(lock)
    monkeypatch.setattr(os, "kill", real_kill)
    held = [k for k, (got, _) in results.items() if got is not None]
    assert len(held) == 1, results
    winner = results[held[0]][0]
    loser_holder = results[({"a", "b"} - set(held)).pop()][1]
    assert loser_holder  # the loser was told who holds it
    assert lock.read_text().split()[:2] == [str(os.getpid()), HOST]
    winner.release()
    assert not lock.exists()


def test_many_contenders_for_one_stale_lock_one_wins(tmp_path):
    lock = tmp_path / "m_seed0.lock"
    lock.write_text(f"{dead_pid()} {HOST} flock\n")
    barrier, got = threading.Barrier(8), []

    def contend():
        barrier.wait()
        got.append(compare.claim(lock))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [held for held, _ in got if held is not None]
    assert len(winners) == 1 and all(holder for held, holder in got if held is None)
    winners[0].release()


def test_an_empty_lock_file_is_taken_over(tmp_path):
    """A process killed between creating its lock file and writing its pid leaves an empty file: not a holder."""
    lock = tmp_path / "m_seed0.lock"
    lock.write_text("")
    held, holder = compare.claim(lock)
    assert held is not None and holder == ""
    assert lock.read_text().split()[:2] == [str(os.getpid()), HOST]
    held.release()


def test_a_live_holder_is_respected_whatever_pid_its_file_names(tmp_path):
    """The lock is the holder's flock, not the pid in the file: a live holder whose file names a dead pid (say, the
    parent that started it) keeps the run; once it exits, the lock is free."""
    lock = tmp_path / "m_seed0.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b"{dead_pid()} {HOST} flock\\n")
            print("held", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        got, who = compare.claim(lock)
        assert got is None and who.startswith("pid ") and who.endswith(f" on {HOST}")
    finally:
        holder.kill()
        holder.wait()
    got, who = compare.claim(lock)
    assert got is not None and who == ""
    got.release()


def test_the_lock_stays_held_while_a_child_that_inherited_it_lives(tmp_path):
    """The job process inherits the lock: if the parent is gone (its descriptor closed without releasing), the
    run stays locked until the job process exits too."""
    lock = tmp_path / "m_seed0.lock"
    held, _ = compare.claim(lock)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], pass_fds=(held.fd,))
    try:
        held.name(child.pid)
        os.close(held.fd)  # the parent's copy is gone, as when the parent is killed
        got, who = compare.claim(lock)
        assert got is None and who == f"pid {child.pid} on {HOST}"
    finally:
        child.kill()
        child.wait()
    got, _ = compare.claim(lock)
    assert got is not None
    got.release()


# ---------------------------------------------------------------------------------------- the job process's life
def stand_in(tmp_path: Path, *, prctl: bool) -> Path:
    """An executable that stands in for the Python interpreter the parent starts the job process with: it runs
    compare.py's `__main__` (the job process's real entry), whose training stops at `import torch` to write its
    pid and sleep. prctl=False hides ctypes from it, so the entry must fall back to polling its parent."""
    fake = tmp_path / "fake_worker.py"
    fake.write_text(textwrap.dedent(f"""
        import os, runpy, sys, time, types
        from pathlib import Path

        class SleepAtTorch:  # the job's first heavy import: stand in for training from here on
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    Path({str(tmp_path / "worker.pid")!r}).write_text(str(os.getpid()))
                    time.sleep(120)
                return None

        if not {prctl!r}:
            stub = types.ModuleType("ctypes")
            def CDLL(*args, **kwargs):
                raise OSError("no ctypes here")
            stub.CDLL = CDLL
            sys.modules["ctypes"] = stub
        sys.meta_path.insert(0, SleepAtTorch())
        args = sys.argv[1:]
        if args[:2] == ["-m", "ultra_vil.study.worker"]:
            args = args[2:]
        sys.argv = [{str(COMPARE_PY)!r}, *args]
        runpy.run_path({str(COMPARE_PY)!r}, run_name="__main__")
    """))
    exe = tmp_path / "python-stand-in"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(fake))} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def start_parent(tmp_path: Path, exe: Path, *, lock: bool) -> subprocess.Popen:
    """A parent process that (with lock=True claims the run's lock, then) starts the job as compare.py does."""
    out = tmp_path / "out"
    for sub in ("rows", "logs", "runs", "jobs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    job = {"tag": "m", "seed": 0, "out_dir": str(out), "row_file": str(out / "rows" / "m_seed0.json")}
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        sys.path.insert(0, {str(ROOT)!r})
        import ultra_vil.study as compare
        sys.executable = {str(exe)!r}  # the job process starts as `sys.executable -m ultra_vil.study.worker ...`
        kwargs = {{}}
        if {lock!r}:
            held, who = compare.claim(Path({str(out / "jobs" / "m_seed0.lock")!r}))
            assert held is not None, who
            kwargs["lock"] = held
        out = Path({str(out)!r})
        compare.run_worker({job!r}, out / "jobs" / "m_seed0.json", out / "logs" / "m_seed0.log", True, **kwargs)
    """)
    return subprocess.Popen([sys.executable, "-c", script])


@pytest.mark.parametrize("prctl", [True, False], ids=["prctl", "poll"])
def test_the_job_process_dies_with_its_parent(tmp_path, prctl):
    """kill -9 of compare.py must not leave its job process training on: a rerun would take the run over and
    delete the run folder the orphan still writes. Linux: PR_SET_PDEATHSIG; elsewhere the job polls its parent."""
    parent = start_parent(tmp_path, stand_in(tmp_path, prctl=prctl), lock=False)
    pid_file = tmp_path / "worker.pid"
    worker = None
    try:
        assert wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip()), "the job process never started"
        worker = int(pid_file.read_text())
        assert not gone(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: gone(worker), timeout=15.0), "the job process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if worker is not None and not gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_job_whose_parent_is_gone_before_it_starts_exits_at_once(tmp_path):
    """The parent may die before the job has set up its watch; and a launcher may stand between the two (then the
    job watches the parent's pid): either way a job whose parent is gone does not start training."""
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('c', {str(COMPARE_PY)!r}); "
            "c = importlib.util.module_from_spec(spec); sys.modules['c'] = c; spec.loader.exec_module(c); "
            f"c.die_with_parent({dead_pid()}); print('went on')")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")  # exited quietly, before going on


def test_the_lock_names_the_job_process_and_is_free_once_both_are_gone(tmp_path):
    parent = start_parent(tmp_path, stand_in(tmp_path, prctl=True), lock=True)
    pid_file, lock = tmp_path / "worker.pid", tmp_path / "out" / "jobs" / "m_seed0.lock"
    worker = None
    try:
        assert wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip()), "the job process never started"
        worker = int(pid_file.read_text())
        got, who = compare.claim(lock)
        assert got is None and who == f"pid {worker} on {HOST}"  # the process that writes the run
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: gone(worker), timeout=15.0)
        got, who = compare.claim(lock)
        assert got is not None and who == ""
        got.release()
    finally:
        parent.kill()
        parent.wait()
        if worker is not None and not gone(worker):
            os.kill(worker, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- rows of earlier runs
def saved_row(tag: str, seed: int) -> dict:
    row = {c: 1.0 for c in compare.COLUMNS} | {"model": tag, "seed": seed, "map50": 0.5, "map50_95": 0.3,
                                                "ap50_a": 0.5, "ap50_95_a": 0.3}  # fmt: skip
    return {"row": row, "notes": {}, "names": ["a"], "yaml_sha": "stock", "env": {"threads": 1}}


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A stock-only study (yolov8n, seeds 0 1) whose runs are stand-ins: preflight skipped, and a "training" run
    writes a fixed row. Returns (argv, out, trained) with trained the (tag, seed) list of runs started."""
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames:\n  0: a\n")
    out = tmp_path / "study"
    trained = []

    def run_worker(job, job_file, log_file, quiet, lock=None):
        trained.append((job["tag"], job["seed"]))
        Path(job["row_file"]).write_text(json.dumps(saved_row(job["tag"], job["seed"])))
        return True, ""

    monkeypatch.setattr(runner, "preflight", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run_worker", run_worker)
    argv = ["--data", str(data), "--models", "--scale", "n", "--epochs", "1", "--seeds", "0", "1", "--img-size", "64",
            "--batch-size", "2", "--device", "cpu", "--workers", "0", "--quiet", "--out-dir", str(out)]  # fmt: skip
    assert script.main(argv) == 0 and trained == [("yolov8n", 0), ("yolov8n", 1)]
    trained.clear()
    return argv, out, trained


CORRUPT = {
    "truncated": '{"row": {"model": "yolov8n", "se',
    "a list": "[]",
    "text for a number": None,  # a valid row whose map50 is a string
}


def corrupt(path: Path, kind: str) -> None:
    if CORRUPT[kind] is None:
        saved = json.loads(path.read_text())
        saved["row"]["map50"] = "high"
        path.write_text(json.dumps(saved))
    else:
        path.write_text(CORRUPT[kind])


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_row_is_trained_again_with_a_warning(study, kind, capsys):
    argv, out, trained = study
    row_file = out / "rows" / "yolov8n_seed0.json"
    corrupt(row_file, kind)
    capsys.readouterr()
    assert script.main(argv) == 0
    text = capsys.readouterr().out
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(row_file) in warnings[0] and "training it again" in warnings[0], text
    assert trained == [("yolov8n", 0)]
    assert json.loads(row_file.read_text()) == saved_row("yolov8n", 0)
    assert (out / "compare.csv").read_text().count("yolov8n,") == 2


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_report_names_a_corrupt_row_in_one_line(study, kind, capsys):
    argv, out, trained = study
    row_file = out / "rows" / "yolov8n_seed1.json"
    corrupt(row_file, kind)
    capsys.readouterr()
    assert script.main([*argv, "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {row_file}: ") and "\n" not in err, err
    assert trained == []


def test_closing_note_names_only_runs_the_reports_lack(study, capsys):
    """Runs held by another process: seed 1 has its row (the reports hold it), seed 2 has none (they lack it)."""
    argv, out, trained = study
    argv = [*argv, "--seeds", "0", "1", "2"]
    for seed in (1, 2):  # an older compare.py's lock ("PID HOST"): this test's process, alive
        (out / "jobs" / f"yolov8n_seed{seed}.lock").write_text(f"{os.getpid()} {HOST}")
    capsys.readouterr()
    assert script.main(argv) == 0
    text = capsys.readouterr().out
    assert trained == []
    assert "yolov8n seed 1: running in another process" in text and "yolov8n seed 2: running in another" in text
    assert (out / "compare.csv").read_text().count("yolov8n,") == 2  # seeds 0 and 1
    note = [line for line in text.splitlines() if "other processes" in line]
    assert len(note) == 1 and "(yolov8n seed 2)" in note[0] and "seed 1" not in note[0], note
    assert note[0].startswith("1 run(s) ")
