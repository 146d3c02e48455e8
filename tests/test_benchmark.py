"""scripts/benchmark.py and its library (ultra_vil.bench, ultra_vil.device, the dispatch table of
ultra_vil.mlstm.dispatch) at toy sizes on the CPU.

No test asserts a time: the numbers of a toy run mean nothing. What is tested is that every section runs and
writes its rows, CSV, markdown and plot; that comparisons really interleave; that the dispatch table keeps its
one format; and that other checkouts and the official code run in worker processes.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest
import torch

from ultra_vil import device as devices
from ultra_vil.bench import guard, timing
from ultra_vil.bench.mlstm_sections import pick_thresholds
from ultra_vil.mlstm import dispatch

REPO = Path(__file__).resolve().parents[1]
# a checkout of commit 3c73528 to time against (`git worktree add DIR 3c73528`), named by ULTRA_VIL_BASELINE_SRC
BASELINE = Path(os.environ.get("ULTRA_VIL_BASELINE_SRC", "") or "/nonexistent-baseline")


def load_script():
    return conftest.load_script("benchmark")


def read_rows(out: Path) -> list[dict]:
    with open(out / "benchmark.csv") as fh:
        return list(csv.DictReader(fh))


def test_benchmark_refuses_a_wrong_backend(monkeypatch):
    """check_backend passes the real backends and raises for one whose numbers are off."""
    for backend in ("parallel", "chunkwise", "recurrent"):
        assert guard.check_backend(backend, NH=2, DH=16, device=torch.device("cpu"), dtype=torch.float32) < 1e-4
    real = guard.mlstm

    def off_by_a_bit(*args, **kwargs):
        out = real(*args, **kwargs)
        return out * 1.01 if kwargs.get("backend") == "chunkwise" else out

    monkeypatch.setattr(guard, "mlstm", off_by_a_bit)
    with pytest.raises(RuntimeError, match="chunkwise"):
        guard.check_backend("chunkwise", NH=2, DH=16, device=torch.device("cpu"), dtype=torch.float32)


def test_compare_interleaved_takes_turns():
    """Warm-up A, B, then A, B per round: both contenders see the same stretch of machine time."""
    calls = []
    res = timing.compare_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                                     warmup=1)  # fmt: skip
    assert calls == ["a", "b"] * 4
    for r in res.values():
        assert len(r["times"]) == 3 and r["min"] == min(r["times"]) and r["min"] <= r["median"] <= max(r["times"])
    # a time budget stops adding rounds, but never below min_rounds
    calls.clear()
    res = timing.compare_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=50,
                                     warmup=0, max_seconds=0.0, min_rounds=2)  # fmt: skip
    assert calls == ["a", "b", "a", "b"] and len(res["a"]["times"]) == 2
    assert timing.ratios({"a": {"min": 2.0, "median": 6.0}, "b": {"min": 1.0, "median": 2.0}}, "a", "b") == (2, 3)


def test_resolve_device_one_copy_of_the_rules():
    assert devices.resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert devices.resolve_device("cpu") == devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "-1"):
        with pytest.raises(devices.DeviceError, match="must be auto, cpu, cuda, cuda:N or N"):
            devices.resolve_device(bad)
    with pytest.raises(devices.DeviceError, match="several devices"):
        devices.resolve_device("0,1")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:0", "0"):
            with pytest.raises(RuntimeError, match="CUDA is not available"):  # DeviceError is a RuntimeError
                devices.resolve_device(spec)
    from ultra_vil.errors import UserError

    assert issubclass(devices.DeviceError, UserError) and issubclass(devices.DeviceError, RuntimeError)
    assert devices.ultralytics_device("cpu") == "cpu" and devices.ultralytics_device("cuda:2") == "2"
    # training and the study use the same function, not a copy
    from ultra_vil.study import worker
    from ultra_vil.train import distributed

    assert distributed.resolve_device is devices.resolve_device
    assert worker.resolve_device("cpu") == "cpu"  # the string form settings.json stores


def test_peak_memory_of_a_block_counts_an_allocation():
    """The RSS-based peak of a long block (compare.py's training runs) sees a 64 MiB tensor that is written.

    In a fresh process, as in a training run: RSS is per process, and after the earlier tests of a long pytest
    process, memory they freed may still be resident and be reused, so the peak need not rise (CI saw 0.0 once).
    """
    code = """
import torch
from ultra_vil.bench.memory import peak_memory
with peak_memory("cpu") as peak:
    x = torch.ones(2**24)
del x
assert peak.mb is None or peak.mb > 32, peak.mb
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


QUIET_PROBE = """
import os, torch
from ultra_vil.bench.memory import cpu_memory_mb
for _ in range(3):
    assert cpu_memory_mb(lambda: torch.ones(1000))[0] > 0
assert "KINETO_LOG_LEVEL" not in os.environ  # set for the profiler's start only
"""


def test_cpu_memory_mb_keeps_the_profiler_quiet():
    """cpu_memory_mb runs torch's profiler, whose kineto backend would print `USDT: ... profiler_start` and
    `profiler_stop` for every call and, without a GPU, `ERROR: ... gpuGetDeviceCount failed`. In a fresh process:
    kineto reads its log level once, at its first start."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "USDT" not in out and "gpuGetDeviceCount" not in out, out[-2000:]


def test_worker_helpers_need_only_torch_and_the_standard_library():
    """Worker processes load timing.py and memory.py by path beside an older checkout's ultra_vil: the two files
    may import nothing but torch and the standard library (ultra_vil.bench.workers)."""
    import ast

    for name in ("timing.py", "memory.py"):
        tree = ast.parse((REPO / "ultra_vil" / "bench" / name).read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert mods <= set(sys.stdlib_module_names) | {"torch", "__future__"}, (name, sorted(mods))


def test_dispatch_json_round_trips_in_the_one_format(tmp_path):
    base = {"comment": "old", "cuda": {"bfloat16": {"parallel_max_seq": 512, "triton_min_seq": None}}}
    measured = {"cpu": {"float32": {"parallel_max_seq": 196, "triton_min_seq": None}}}
    path = tmp_path / "mlstm_dispatch.json"
    written = dispatch.write_dispatch(path, measured, "measured by scripts/benchmark.py on test, today", base)
    raw = json.loads(path.read_text())
    assert raw == written == dispatch.read_dispatch(path)
    assert [p.name for p in tmp_path.iterdir()] == ["mlstm_dispatch.json"]  # written atomically: no temp file left
    assert raw == {"comment": "measured by scripts/benchmark.py on test, today",
                   "cpu": {"float32": {"parallel_max_seq": 196, "triton_min_seq": None}},
                   "cuda": {"bfloat16": {"parallel_max_seq": 512, "triton_min_seq": None}}}  # fmt: skip
    assert '"triton_min_seq": null' in path.read_text()  # JSON null, as the mlstm module reads it
    for broken in ({"cpu": {}}, {"comment": "x", "tpu": {}}, {"comment": "x", "cpu": {"float33": {}}},
                   {"comment": "x", "cpu": {"float32": {"parallel_max_seq": 1}}},
                   {"comment": "x", "cpu": {"float32": {"parallel_max_seq": -1, "triton_min_seq": None}}},
                   {"comment": "x", "cpu": {"float32": {"parallel_max_seq": 1, "triton_min_seq": "64"}}}):  # fmt: skip
        with pytest.raises(ValueError):
            dispatch.validate_dispatch(broken)
    assert dispatch.read_dispatch(tmp_path / "missing.json") == {"comment": "missing.json not found"}
    if dispatch.DISPATCH_TABLE_PATH.is_file():  # the committed package copy is in the same format
        dispatch.read_dispatch(dispatch.DISPATCH_TABLE_PATH)


def test_pick_thresholds_at_the_crossover():
    t = lambda ms: {"min": ms, "median": ms}
    grid = {64: {"parallel": t(1), "chunkwise": t(2)}, 196: {"parallel": t(2), "chunkwise": t(3)},
            256: {"parallel": t(5), "chunkwise": t(4)}, 1024: {"parallel": t(40), "chunkwise": t(10)}}  # fmt: skip
    assert pick_thresholds(grid) == {"parallel_max_seq": 196, "triton_min_seq": None}
    for S, r in grid.items():
        r["triton"] = t(r["chunkwise"]["min"] / 2 if S >= 256 else 100)
    entry = pick_thresholds(grid)
    assert entry == {"parallel_max_seq": 196, "triton_min_seq": 256}
    # the thresholds are judged by the package's own rule, the one `auto` applies
    assert [dispatch.pick_backend(S, entry, triton=True) for S in grid] == ["parallel", "parallel", "triton", "triton"]
    assert dispatch.pick_backend(4096, entry, triton=False) == "chunkwise"
    assert dispatch.pick_backend(4096, entry, triton=lambda: False) == "chunkwise"


def test_sections_mlstm_dispatch_block_write_rows_csv_md_png(tmp_path):
    script = load_script()
    out = tmp_path / "bench"
    assert script.main(["--tiny", "--device", "cpu", "--only", "mlstm,dispatch,block", "--out-dir", str(out)]) == 0
    rows = read_rows(out)
    by = lambda section: {(r["name"], int(r["x"])) for r in rows if r["section"] == section and r["min_ms"]}
    assert {(n, S) for n in ("parallel", "chunkwise", "recurrent", "auto", "sdpa") for S in (16, 40)} <= by("mlstm")
    assert {(f"{n} float32", S) for n in ("parallel", "chunkwise", "auto") for S in (8, 16, 32)} == by("dispatch")
    assert {(n, px) for n in ("vil_pair", "sequencer_block", "vim_pair", "transformer_layer", "transformer_layer_p0")
            for px in (64, 96)} == by("block")
    for r in rows:
        if r["min_ms"]:
            assert float(r["min_ms"]) <= float(r["median_ms"]) and float(r["ratio_min"]) > 0
    assert all(float(r["peak_mem_mb"]) > 0 for r in rows if r["section"] == "block")
    md = (out / "benchmark.md").read_text()
    for heading in ("## Targets", "## mlstm", "## dispatch", "## block", "peak memory, worst size",
                    "Each mixer against the transformer layer", "with dropout 0", "| sequencer_block | time ",
                    "| vim_pair | time ",
                    "`auto`'s choice vs the fastest backend"):  # fmt: skip
        assert heading in md
    assert (out / "benchmark.png").stat().st_size > 10_000
    table = dispatch.read_dispatch(out / "mlstm_dispatch.json")
    assert set(table["cpu"]["float32"]) == {"parallel_max_seq", "triton_min_seq"}
    assert "measured by scripts/benchmark.py on cpu" in table["comment"]
    # --merge rebuilds the same tables from the CSV (sections measured in separate runs make one report)
    merged = tmp_path / "merged"
    assert script.main(["--merge", str(out), "--out-dir", str(merged)]) == 0
    assert read_rows(merged) == rows
    merged_md = (merged / "benchmark.md").read_text()
    assert merged_md.split("\n## mlstm")[1] == md.split("\n## mlstm")[1]
    assert merged_md.split("## Targets")[1].split("Notes:")[0] == md.split("## Targets")[1].split("Notes:")[0]
    assert dispatch.read_dispatch(merged / "mlstm_dispatch.json") == table
    # a section measured again in a later run replaces the older rows of that section (and only those)
    again = tmp_path / "again"
    assert script.main(["--tiny", "--device", "cpu", "--only", "block", "--out-dir", str(again)]) == 0
    joined = tmp_path / "joined"
    assert script.main(["--merge", str(out), str(again), "--out-dir", str(joined)]) == 0
    got = read_rows(joined)
    assert [r for r in got if r["section"] != "block"] == [r for r in rows if r["section"] != "block"]
    assert [r for r in got if r["section"] == "block"] == read_rows(again)


def test_yolo_section_runs_and_reports_both_models(tmp_path):
    """Today's YOLO section never ran (missing default cfg path, dict output in train mode): it must now."""
    script = load_script()
    out = tmp_path / "bench"
    assert script.main(["--tiny", "--device", "cpu", "--only", "yolo", "--out-dir", str(out)]) == 0
    rows = {r["name"]: r for r in read_rows(out)}
    runtimes = ["train", "torch"]
    if importlib.util.find_spec("onnxruntime"):
        # an export failure is reported as a row (the export itself is tested in test_yolo_cli.py)
        if "onnx" in rows:
            assert rows["onnx"]["note"].startswith("ONNX export failed: ")
        else:
            runtimes.append("onnx")
    for rt in runtimes:
        for model in ("yolov8n", "yolov8n-vil"):
            assert float(rows[f"{model}_{rt}"]["min_ms"]) > 0, (model, rt, rows.get(f"{model}_{rt}"))
        assert float(rows[f"yolov8n_{rt}"]["ratio_min"]) == 1.0
    assert float(rows["yolov8n-vil_train"]["peak_mem_mb"]) > 0
    assert "YOLOv8n-ViL vs YOLOv8n, fwd+bwd peak memory" in (out / "benchmark.md").read_text()


def fake_official(root: Path) -> Path:
    """A stand-in for NX-AI's vision_lstm package with VisionLSTM2's constructor arguments (tests only)."""
    pkg = root / "vision_lstm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "vision_lstm2.py").write_text(
        "import torch\n"
        "class VisionLSTM2(torch.nn.Module):\n"
        "    def __init__(self, dim=192, depth=12, patch_size=16, input_shape=(3, 224, 224), output_shape=(1000,)):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.Conv2d(input_shape[0], dim, patch_size, patch_size)\n"
        "        self.head = torch.nn.Linear(dim, output_shape[0])\n"
        "    def forward(self, x):\n"
        "        return self.head(self.embed(x).mean((2, 3)))\n"
    )
    return root


def test_classifier_section_runs_official_and_baseline_in_workers(tmp_path):
    """--official-src (a stand-in package here) and --baseline-src (the 3c73528 worktree, where it exists) each run
    in a worker process that imports its own code, not this checkout's; one run, to start few processes."""
    script = load_script()
    out = tmp_path / "bench"
    official = fake_official(tmp_path / "official")
    argv = ["--tiny", "--device", "cpu", "--only", "classifier", "--out-dir", str(out), "--official-src", str(official)]
    baseline = (BASELINE / "ultra_vil" / "__init__.py").is_file()
    assert script.main(argv + (["--baseline-src", str(BASELINE)] if baseline else [])) == 0
    rows = {r["name"]: r for r in read_rows(out)}
    names = ["ours", "official"] + (["baseline"] if baseline else [])
    assert set(rows) == {f"{n}_{step}" for n in names for step in ("train", "infer")}
    assert str(official / "vision_lstm") in rows["official_train"]["note"]
    assert str(REPO / "ultra_vil") in rows["ours_train"]["note"]
    if baseline:
        assert str(BASELINE / "ultra_vil") in rows["baseline_train"]["note"]
    assert all(float(r["throughput"]) > 0 and r["vs"] == "official" for r in rows.values())
    assert float(rows["official_infer"]["ratio_min"]) == 1.0 and float(rows["ours_train"]["peak_mem_mb"]) > 0
    md = (out / "benchmark.md").read_text()
    assert "speed-up vs official" in md and (not baseline or "speed-up vs baseline" in md)
    if not baseline:
        pytest.skip("official part passed; set ULTRA_VIL_BASELINE_SRC to a checkout of 3c73528 for the --baseline-src part")


def test_bad_arguments_are_one_line_errors(tmp_path):
    script = load_script()
    with pytest.raises(SystemExit, match="unknown section"):
        script.main(["--only", "mlstm,nope", "--out-dir", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            script.main(["--device", "cuda", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a directory"):
        script.main(["--tiny", "--only", "classifier", "--baseline-src", str(tmp_path / "nope"), "--out-dir",
                     str(tmp_path)])  # fmt: skip
