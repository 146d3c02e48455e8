"""compare.py's study protocols (cfg/compare/*.yaml) and the run locks that let processes share an --out-dir.

No training: the committed protocols parse into the same settings as their flags, bad files name the file (and
line), flags override a protocol, and a lock held by a live process is respected while a dead one's is taken over.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from ultra_vil.yolo import compare

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
        ("epochs: [1, 2]\n", "epochs: one value expected"),
        ("epochs: many\n", "epochs: 'many' is not a valid value"),
        ("optimizer: Lion\n", "not one of"),
        ("quiet: 3\n", "quiet: true or false expected"),
        ("- a\n- b\n", "expected a mapping"),
        ("epochs: 3\nseeds: [0, 1\n", "p.yaml:"),  # a YAML syntax error names the line
    ],
)
def test_bad_protocol_names_the_file_and_the_key(tmp_path, text, message):
    proto = tmp_path / "p.yaml"
    proto.write_text(text)
    with pytest.raises(SystemExit, match="--protocol .*p.yaml") as e:
        parsed(["--protocol", str(proto)])
    assert message in str(e.value)


def test_missing_protocol_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="--protocol .*nope.yaml"):
        parsed(["--protocol", str(tmp_path / "nope.yaml")])


def test_claim_respects_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / "m_seed0.lock"
    assert compare.claim(lock) == ""  # taken by this process
    assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"
    assert compare.claim(lock) == f"pid {os.getpid()} on {socket.gethostname()}"  # held: a second claim fails
    lock.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{int(dead.stdout)} {socket.gethostname()}")  # a process that has exited
    assert compare.claim(lock) == ""  # stale: taken over
    lock.write_text("1 another-host")  # another machine's lock is never taken over
    assert compare.claim(lock) == "pid 1 on another-host"
