"""compare.py's study protocols (cfg/compare/*.yaml) and the run locks that let processes share an --out-dir.

No training: the committed protocols parse into the same settings as their flags, bad files and values of the
wrong type name the file, key and value (and line), flags override a protocol, a lock held by a live process is
respected while a dead one's is taken over, and the committed study reports in another clone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from ultra_vil.errors import UserError
from ultra_vil import study as compare

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted((ROOT / "cfg" / "compare").glob("*.yaml"))


def parsed(argv):
    """The argparse Namespace scripts/compare.py builds from argv (protocol applied), without running anything."""
    parser = load_script("compare").build_parser()
    args = parser.parse_args(argv)
    if args.protocol:
        parser.set_defaults(**compare.read_protocol(args.protocol, parser))
        args = parser.parse_args(argv)
    return args


def test_committed_protocols_exist_and_parse():
    names = {p.name for p in PROTOCOLS}
    assert {"neon-trees-cpu.yaml", "neon-trees-gpu.yaml"} <= names
    for path in PROTOCOLS:
        args = parsed(["--protocol", str(path)])
        assert args.data and args.out_dir and len(args.seeds) >= 5, path
        for m in args.models:  # every model YAML the study names exists
            assert compare.find_file(m).is_file(), (path, m)
        assert compare.find_file(args.data).is_file(), path
        compare.parse_extra(args.extra)  # no fixed key set through --extra


def test_cpu_and_gpu_protocols_are_the_same_comparison_at_other_sizes():
    cpu, gpu = (parsed(["--protocol", str(ROOT / "cfg" / "compare" / n)]) for n in ("neon-trees-cpu.yaml",
                                                                                      "neon-trees-gpu.yaml"))
    assert cpu.models == gpu.models and cpu.data == gpu.data and cpu.scale == gpu.scale
    assert gpu.img_size == 640 and gpu.device != "cpu" and cpu.device == "cpu"


def test_flags_override_the_protocol(tmp_path):
    proto = tmp_path / "p.yaml"
    proto.write_text("data: d.yaml\nepochs: 30\nseeds: [0, 1, 2, 3, 4]\nimg-size: 320\nno_onnx: true\n"
                     "extra: [nbs=4]\nmodels: [cfg/yolov8-vil.yaml]\n")
    args = parsed(["--protocol", str(proto), "--epochs", "2", "--seeds", "7"])
    assert (args.epochs, args.seeds, args.img_size, args.no_onnx, args.extra) == (2, [7], 320, True, ["nbs=4"])
    assert args.models == ["cfg/yolov8-vil.yaml"] and args.data == "d.yaml"


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 3\nimgsz: 320\n", "unknown key 'imgsz'"),
        ("epochs: [1, 2]\n", "epochs: expected one value, got [1, 2]"),
        ("epochs: many\n", "epochs: expected an integer, got 'many'"),
        ("optimizer: Lion\n", "optimizer: 'Lion' not one of"),
        ("quiet: 3\n", "quiet: expected true or false, got 3"),
        ("- a\n- b\n", "expected a mapping"),
        ("epochs: 3\nseeds: [0, 1\n", "p.yaml:3: not valid YAML"),  # a YAML syntax error names the line
        # values of the wrong type are errors, not converted: int(2.9) would train 2 epochs, int(True) 1
        ("epochs: 2.9\n", "epochs: expected an integer, got 2.9"),
        ("epochs: true\n", "epochs: expected an integer, got True"),
        ("lr0: true\n", "lr0: expected a number, got True"),
        ("lr0: '0.01'\n", "lr0: expected a number, got '0.01'"),
        ("seeds: [0, 1.5]\n", "seeds[1]: expected an integer, got 1.5"),
        ("seeds: []\n", "seeds: expected at least one value, got []"),  # would run nothing
        ("data:\n", "data: expected a string, got None"),
        ("out_dir: 7.5\n", "out_dir: expected a string, got 7.5"),
        ("models: [cfg/yolov8-vil.yaml, {a: 1}]\n", "models[1]: expected a string, got {'a': 1}"),
        ("extra: {nbs: 4}\n", "extra: expected a list, got {'nbs': 4}"),
    ],
)
def test_bad_protocol_names_the_file_the_key_and_the_value(tmp_path, text, message):
    proto = tmp_path / "p.yaml"
    proto.write_text(text)
    with pytest.raises(UserError) as e:
        parsed(["--protocol", str(proto)])
    assert str(e.value).startswith(f"{proto}") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_protocol_values_of_the_right_type_pass(tmp_path):
    """Integers are numbers (lr0: 1 is 1.0), a YAML integer is a string where a string is expected (device: 0
    means cuda:0), and a list flag takes one value alone (seeds: 3 is [3]); an empty models list is stock only."""
    proto = tmp_path / "p.yaml"
    proto.write_text("lr0: 1\ndevice: 0\nseeds: 3\nmodels: []\nepochs: 4\n")
    args = parsed(["--protocol", str(proto)])
    assert (args.lr0, args.device, args.seeds, args.models, args.epochs) == (1.0, "0", [3], [], 4)
    assert isinstance(args.lr0, float)


def test_bad_protocol_exits_2_with_one_line(tmp_path, capsys):
    proto = tmp_path / "p.yaml"
    proto.write_text("epochs: 2.9\n")
    assert load_script("compare").main(["--protocol", str(proto)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {proto}: epochs: expected an integer, got 2.9\n"


def test_missing_protocol_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="nope.yaml"):
        parsed(["--protocol", str(tmp_path / "nope.yaml")])


def test_claim_respects_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / "m_seed0.lock"
    held, holder = compare.claim(lock)  # taken by this process
    assert held is not None and holder == ""
    assert lock.read_text() == f"{os.getpid()} {socket.gethostname()} flock\n"
    assert compare.claim(lock) == (None, f"pid {os.getpid()} on {socket.gethostname()}")  # held: a second claim fails
    held.release()
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{int(dead.stdout)} {socket.gethostname()}")  # an older version's lock, its process exited
    held, holder = compare.claim(lock)
    assert held is not None and holder == ""  # stale: taken over
    held.release()
    lock.write_text(f"{os.getppid()} {socket.gethostname()}")  # an older version's lock, its process alive
    assert compare.claim(lock) == (None, f"pid {os.getppid()} on {socket.gethostname()}")
    lock.write_text("1 another-host flock\n")  # another machine's lock is never taken over
    assert compare.claim(lock) == (None, "pid 1 on another-host")


# ---------------------------------------------------------------------------------- the study in another clone
def test_committed_study_reports_in_another_clone(tmp_path):
    """The committed CPU study, copied to another folder, reports there: settings.json names the data YAML by its
    path inside the repository, and the data counts by its content. --report trains nothing and builds no model."""
    clone = tmp_path / "elsewhere" / "ultra-vil"
    study = Path("results") / "neon-trees-cpu"
    files = [Path("pyproject.toml"), Path("scripts") / "compare.py", Path("datasets") / "neon-trees.yaml", *(
        p.relative_to(ROOT) for p in (*(ROOT / "cfg").rglob("*.yaml"), *(ROOT / study).glob("*.json"),
                                      *(ROOT / study / "rows").glob("*.json"),
                                      *(ROOT / study / "runs").glob("*/results.csv")))]  # fmt: skip
    for rel in files:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, clone / rel)
    settings_file = clone / study / "settings.json"
    assert json.loads(settings_file.read_text())["data"] == "datasets/neon-trees.yaml"
    committed_verdicts = (ROOT / study / "compare.md").read_text().split("## Runs")[0]
    assert committed_verdicts.count("- **") == 5  # every ViL model has its verdict
    rows_before = {p.name: p.read_bytes() for p in (clone / study / "rows").glob("*.json")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}  # the code under test, not the copy's
    cmd = [sys.executable, "scripts/compare.py", "--protocol", "cfg/compare/neon-trees-cpu.yaml", "--report",
           "--out-dir", str(clone / study)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert ": training " not in proc.stdout and "holds every model: not measured again" in proc.stdout
    md = (clone / study / "compare.md").read_text()
    assert "Data: `datasets/neon-trees.yaml`" in md
    assert md.split("## Runs")[0] == committed_verdicts  # the same verdicts and costs as the committed report
    assert json.loads(settings_file.read_text())["data"] == "datasets/neon-trees.yaml"
    assert not any((clone / study / "runs").glob("*/weights")) and not (clone / "runs").exists()
    assert {p.name: p.read_bytes() for p in (clone / study / "rows").glob("*.json")} == rows_before


def test_settings_of_an_older_version_name_the_data_by_its_absolute_path(tmp_path):
    """An older settings.json holds the absolute path of the clone it ran in: the same data (by sha) is the same
    study, rewritten in the stored form; other data is refused, its paths shown."""
    root = tmp_path / "clone"
    (root / "datasets").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    data = root / "datasets" / "d.yaml"
    data.write_text("names: {0: a}\n")
    out = root / "results" / "study"
    out.mkdir(parents=True)
    settings = {"data": compare.stored_path(data, out), "data_sha": compare.file_sha(data), "epochs": 3}
    assert settings["data"] == "datasets/d.yaml" and compare.stored_file(settings["data"], out) == data
    path = out / "settings.json"
    path.write_text(json.dumps({**settings, "data": "/some/other/clone/datasets/d.yaml"}))
    compare.check_settings(path, settings)
    assert json.loads(path.read_text()) == settings
    path.write_text(json.dumps({**settings, "data": "/some/other/clone/datasets/d.yaml", "data_sha": "0" * 16}))
    with pytest.raises(UserError, match="data_sha: '0000000000000000' there") as e:
        compare.check_settings(path, settings)
    assert "/some/other/clone/datasets/d.yaml" in str(e.value)
    outside = tmp_path / "elsewhere.yaml"  # a file outside the out-dir's repository: its absolute path
    outside.write_text("")
    assert compare.stored_path(outside, out) == str(outside)


def test_model_sha_follows_the_yaml_content_not_its_comments(tmp_path):
    """A comment edit keeps a finished row valid; a changed layer makes it a new model. Rows stored with the raw
    byte sha (studies written before content shas) stay valid while the file is unchanged."""
    from ultra_vil.study.models import file_sha, model_sha, model_shas

    original = tmp_path / "yolov8-vil.yaml"
    shutil.copy(ROOT / "cfg" / "yolov8-vil.yaml", original)
    sha, byte_sha = model_shas(original)
    assert sha == model_sha(original) and byte_sha == file_sha(original) and sha != byte_sha
    original.write_text("# a new comment\n" + original.read_text().replace("[512]] # 6 ViL", "[ 512 ] ]   # layer 6"))
    assert model_sha(original) == sha and file_sha(original) != byte_sha
    original.write_text(original.read_text().replace("[ 512 ] ]", "[256]]"))
    assert model_sha(original) != sha


def test_committed_rows_match_the_yamls_as_they_are():
    """Every finished ViL row of the committed CPU study names its YAML's current sha, so rerunning the committed
    protocol trains nothing again (an edit that changes a layer of a shipped YAML fails here)."""
    from ultra_vil.study.models import find_file, model_sha, pick_models

    rows = ROOT / "results" / "neon-trees-cpu" / "rows"
    settings = parsed(["--protocol", str(ROOT / "cfg" / "compare" / "neon-trees-cpu.yaml")])
    vil = [m for m in pick_models(settings.models, settings.scale) if m["yaml"]]
    assert len(vil) == 5
    for m in vil:
        files = sorted(rows.glob(f"{m['tag']}_seed*.json"))
        assert len(files) == 5, m["tag"]
        for f in files:
            assert json.loads(f.read_text())["yaml_sha"] == model_sha(find_file(m["yaml"])), f.name
