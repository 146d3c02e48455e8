"""The one place where ultra-vil touches Ultralytics internals: make the ViL modules usable in model YAMLs.

Ultralytics 8.4 has no plug-in mechanism for model layers, so
`register()` does the following, each checked, all idempotent:

1. Name injection: `parse_model` resolves a YAML module name with `globals()[name]` inside
   `ultralytics.nn.tasks`, so every class of `MODULES` is set as an attribute of that module.
2. Channel and depth scaling like C2f: `parse_model` keeps the modules that get c1 inferred, c2 width-scaled and
   n passed as third argument in two *local* sets (`base_modules`, `repeat_modules`). The installed function is
   recompiled once from its own source with `| _ultra_vil_base_modules` and `| _ultra_vil_repeat_modules`
   appended to those two assignments (an AST edit made in memory at run time; no source text is copied into this
   project and no installed file is changed). The two extra sets are globals of `ultralytics.nn.tasks`, read at
   call time.
3. Clear YAML errors: the recompiled parser is wrapped so that an error raised while building one of our
   modules names the YAML file, the layer index, the module and the argument (`YAMLLayerError`).
4. `torch.serialization.add_safe_globals` for every module class of `ultra_vil.vil` (the classes of
   `ultra_vil.layers` included: they keep `ultra_vil.vil` as their pickled path), `ultra_vil.sequencer`,
   `ultra_vil.vim`, `ultra_vil.classifier` and `ultra_vil.yolo.modules`, so checkpoints also load under
   `ULTRALYTICS_SAFE_LOAD=1`.
5. Weight decay: Ultralytics' `BaseTrainer.build_optimizer` exempts only `torch.nn` norm layers and parameters
   named `bias`, so it would decay ViL's norm gains (stored as w in 1 + w: decay pulls them to gain 1, not 0, but
   the recipe exempts them), position embedding and `learnable_skip`. The method is wrapped (once, when the
   trainer module is loaded, checked at each model build) to move exactly those parameters of our modules into
   its no-decay group; stock models get the stock groups.
6. Float16 checkpoint guard: `BaseTrainer.save_model` is wrapped (the same way) to warn, naming the tensor, when
   the float32 EMA of a model holding our modules has a value beyond float16's range, which the checkpoint
   Ultralytics writes in float16 would clamp (`ultra_vil.fp16_range`).
7. YAMLs by name: `check_yaml` is wrapped so that `model=yolov8n-vil.yaml` finds the packaged YAMLs from any folder.

`ViLBackbone` is a multi-output layer taken like Ultralytics' `TorchVision` (arguments as written): its name is
injected but it is in neither set; its string arguments (preset, weights path) are quoted before parsing, since
`parse_model` literal-evaluates strings and a path such as `/data/vil.th` is not a literal (SyntaxError).

It is called by `import ultra_vil.yolo` (which unpickling a checkpoint does) and by the start-up hook
`_ultra_vil_hook` (installed at the root of site-packages by `pip install`), which runs it right after
`ultralytics.nn.tasks` is imported in any process: the stock `yolo` command and DDP workers included.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
import warnings
from types import FunctionType, ModuleType

import torch
from torch import nn

from ultra_vil import classifier, layers, sequencer, vil, vim
from ultra_vil.errors import UserError
from ultra_vil.fp16_range import float16_overflows, overflow_message
from ultra_vil.yolo import modules
from ultra_vil.yolo.modules import ViLArgumentError, ViLBackbone, ViLC2f, ViLStage

SUPPORTED_ULTRALYTICS = ((8, 4), (8, 5))  # [low, high): the range this file was written and tested against
SKIP_VERSION_CHECK_ENV = "ULTRA_VIL_SKIP_VERSION_CHECK"

# YAML name -> class. Every class here gets C2f's treatment (c1 inferred, c2 width-scaled, n as third argument).
MODULES: dict[str, type[nn.Module]] = {"ViLStage": ViLStage, "ViLC2f": ViLC2f}
MODULES.update({n: getattr(modules, n) for n in ("SequencerStage", "SequencerC2f", "VimStage", "VimC2f")})
MODULES.update({n: getattr(modules, n) for n in ("ViLC3k2", "ViLC2PSA")})  # YOLO11 / YOLO26
# ...of which these also get C3k2's special case (`m is C3k2` in parse_model: c3k=True at m/l/x, non-legacy head)
C3K2_MODULES: dict[str, type[nn.Module]] = {"ViLC3k2": modules.ViLC3k2}
# YAML name -> class, names only: Ultralytics passes their arguments as written (like TorchVision's)
PLAIN_MODULES: dict[str, type[nn.Module]] = {"ViLBackbone": ViLBackbone}

_BASE_SET, _REPEAT_SET = "base_modules", "repeat_modules"  # the local names inside parse_model we extend
_EXTRA_BASE, _EXTRA_REPEAT = "_ultra_vil_base_modules", "_ultra_vil_repeat_modules"  # our globals in tasks
_C3K2_NAME, _EXTRA_C3K2 = "C3k2", "_ultra_vil_c3k2_modules"  # `m is C3k2` -> `... or m in <ours>`
_LOOP_LOCALS = ("i", "m", "args")  # locals of parse_model's layer loop read when translating an error
_MARK = "_ultra_vil_registered"


class YAMLLayerError(ValueError):
    """A model YAML names a ViL module with arguments it cannot take. Says which file, layer, module, argument.

    `argument_problem` is False when the module failed for another reason (then the original error is chained).
    """

    def __init__(self, message: str, argument_problem: bool = True) -> None:
        super().__init__(message)
        self.argument_problem = argument_problem


def register(tasks: ModuleType | None = None) -> ModuleType:
    """Make `MODULES` available to Ultralytics model YAMLs (idempotent; safe to call from any import order).

    Args:
        tasks: The module `ultralytics.nn.tasks`; imported when None (the start-up hook passes it in).

    Returns:
        The `ultralytics.nn.tasks` module that was patched.

    Raises:
        RuntimeError: The installed Ultralytics is outside the supported range, or its `parse_model` no longer
            has the structure this file relies on.
    """
    if tasks is None:
        from ultralytics.nn import tasks
    check_ultralytics_version()
    for name, cls in {**MODULES, **PLAIN_MODULES}.items():
        existing = tasks.__dict__.get(name)
        if existing is not None and existing is not cls:
            raise RuntimeError(
                f"ultra-vil: ultralytics.nn.tasks already defines {name!r} ({existing!r}); refusing to replace it "
                f"with {cls.__module__}.{cls.__qualname__}"
            )
        setattr(tasks, name, cls)
    setattr(tasks, _EXTRA_BASE, frozenset(MODULES.values()))
    setattr(tasks, _EXTRA_REPEAT, frozenset(MODULES.values()))
    setattr(tasks, _EXTRA_C3K2, frozenset(C3K2_MODULES.values()))
    if not getattr(tasks.parse_model, _MARK, False):
        patched = _recompile_parse_model(tasks)
        wrapper = _with_layer_errors(patched, tasks.parse_model)
        tasks.parse_model = wrapper
        nn_pkg = _loaded_module("ultralytics.nn")  # re-exports parse_model; keep the re-export in step
        if nn_pkg is not None and getattr(nn_pkg, "parse_model", None) is wrapper._ultra_vil_original:
            nn_pkg.parse_model = wrapper
    torch.serialization.add_safe_globals(module_classes())
    patch_optimizer_groups()
    patch_checkpoint_guard()
    patch_yaml_lookup(tasks)
    return tasks


def is_registered(tasks: ModuleType | None = None) -> bool:
    """Whether `register()` has been applied to `ultralytics.nn.tasks` in this process."""
    if tasks is None:
        tasks = _loaded_module("ultralytics.nn.tasks")
    if tasks is None:
        return False
    return (
        getattr(tasks.parse_model, _MARK, False)
        and all(tasks.__dict__.get(name) is cls for name, cls in {**MODULES, **PLAIN_MODULES}.items())
        and set(MODULES.values()) <= getattr(tasks, _EXTRA_BASE, frozenset())
        and set(MODULES.values()) <= getattr(tasks, _EXTRA_REPEAT, frozenset())
        and set(C3K2_MODULES.values()) <= getattr(tasks, _EXTRA_C3K2, frozenset())
    )


def module_classes() -> list[type[nn.Module]]:
    """Every nn.Module class whose pickled path is in ultra_vil.vil (the classes of ultra_vil.layers included),
    .sequencer, .vim, .classifier or .yolo.modules (what a checkpoint pickles)."""
    return [
        obj
        for mod in (vil, sequencer, vim, classifier, modules)
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__
    ]


def check_ultralytics_version(version: str | None = None) -> None:
    """Raise RuntimeError unless the Ultralytics version is in SUPPORTED_ULTRALYTICS.

    `ULTRA_VIL_SKIP_VERSION_CHECK=1` turns the error into a warning; the structural checks of the
    `parse_model` patch still run and fail loudly if the internals changed.
    """
    if version is None:
        import ultralytics

        version = ultralytics.__version__
    (lo, hi) = SUPPORTED_ULTRALYTICS
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = None
    if major_minor is not None and lo <= major_minor < hi:
        return
    msg = (
        f"ultra-vil supports ultralytics>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]} (it patches Ultralytics' model parser), "
        f"found ultralytics {version}. Install a supported version (pip install 'ultralytics>={lo[0]}.{lo[1]},"
        f"<{hi[0]}.{hi[1]}'), or set {SKIP_VERSION_CHECK_ENV}=1 to try anyway."
    )
    if os.environ.get(SKIP_VERSION_CHECK_ENV, "") not in ("", "0"):
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return
    raise RuntimeError(msg)


def _loaded_module(name: str) -> ModuleType | None:
    import sys

    return sys.modules.get(name)


class _ExtendModuleSets(ast.NodeTransformer):
    """`base_modules = <expr>` -> `base_modules = <expr> | _ultra_vil_base_modules` (same for repeat_modules)."""

    def __init__(self) -> None:
        self.found: dict[str, int] = {_BASE_SET: 0, _REPEAT_SET: 0}

    def visit_Assign(self, node: ast.Assign) -> ast.Assign:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id in self.found:
            name = node.targets[0].id
            self.found[name] += 1
            extra = _EXTRA_BASE if name == _BASE_SET else _EXTRA_REPEAT
            node.value = ast.BinOp(left=node.value, op=ast.BitOr(), right=ast.Name(id=extra, ctx=ast.Load()))
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        """`m is C3k2` -> `(m is C3k2 or m in _ultra_vil_c3k2_modules)`: ViLC3k2 gets C3k2's scale rule."""
        self.generic_visit(node)
        is_c3k2 = (
            len(node.ops) == 1
            and isinstance(node.ops[0], ast.Is)
            and isinstance(node.left, ast.Name)
            and node.left.id == "m"
            and isinstance(node.comparators[0], ast.Name)
            and node.comparators[0].id == _C3K2_NAME
        )
        if not is_c3k2:
            return node
        self.found[_C3K2_NAME] = self.found.get(_C3K2_NAME, 0) + 1
        ours = ast.Compare(left=ast.Name(id="m", ctx=ast.Load()), ops=[ast.In()],
                           comparators=[ast.Name(id=_EXTRA_C3K2, ctx=ast.Load())])  # fmt: skip
        return ast.BoolOp(op=ast.Or(), values=[node, ours])


def _recompile_parse_model(tasks: ModuleType) -> FunctionType:
    """Recompile the installed `tasks.parse_model` with our two extra module sets; see the module docstring."""
    original = tasks.parse_model
    where = f"{tasks.__name__}.parse_model of ultralytics {getattr(_loaded_module('ultralytics'), '__version__', '?')}"
    try:
        lines, first_line = inspect.getsourcelines(original)
        filename = inspect.getsourcefile(original)
    except (OSError, TypeError) as e:
        raise RuntimeError(f"ultra-vil: cannot read the source of {where} to register the ViL modules ({e})") from e
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, first_line - 1)  # tracebacks keep pointing at the installed file's real lines
    func = tree.body[0] if tree.body else None
    if not isinstance(func, ast.FunctionDef) or func.name != "parse_model":
        raise RuntimeError(f"ultra-vil: {where} is not a plain function definition; its internals changed")
    loop_names = {
        n.id
        for loop in ast.walk(func)
        if isinstance(loop, ast.For)
        for n in ast.walk(loop.target)
        if isinstance(n, ast.Name)
    }
    missing = [name for name in _LOOP_LOCALS if name not in loop_names]
    if missing:
        raise RuntimeError(f"ultra-vil: {where} has no layer loop over {missing}; its internals changed")
    transformer = _ExtendModuleSets()
    transformer.visit(func)
    if transformer.found != {_BASE_SET: 1, _REPEAT_SET: 1, _C3K2_NAME: 1}:
        raise RuntimeError(
            f"ultra-vil: expected exactly one assignment each to the local sets {_BASE_SET!r} and {_REPEAT_SET!r} "
            f"and one `m is {_C3K2_NAME}` test in {where}, found {transformer.found}; Ultralytics' model parser "
            "changed, so the ViL modules cannot get C2f's / C3k2's width and depth scaling. Use a supported "
            "Ultralytics version."
        )
    ast.fix_missing_locations(tree)
    namespace: dict = {}
    # dont_inherit: the code is Ultralytics', so this file's `from __future__ import annotations` must not apply
    exec(compile(tree, filename, "exec", dont_inherit=True), tasks.__dict__, namespace)  # globals: tasks
    return namespace["parse_model"]


def _with_layer_errors(patched: FunctionType, original: FunctionType) -> FunctionType:
    """Wrap the recompiled parser so errors from our modules name the YAML file, layer, module and argument."""

    @functools.wraps(original)
    def parse_model(d, *args, **kwargs):
        patch_optimizer_groups()  # a trainer builds its model here, before its optimizer: the latest point to patch
        patch_checkpoint_guard()
        d = _quote_plain_args(d)
        try:
            return patched(d, *args, **kwargs)
        except Exception as e:
            clear = _layer_error(e, d, patched.__code__)
            if clear is None:
                raise
            if clear.argument_problem:
                raise clear from None  # the message says it all; the traceback would point into parse_model
            raise clear from e  # not an argument problem: keep the original traceback

    setattr(parse_model, _MARK, True)
    parse_model._ultra_vil_original = original
    parse_model._ultra_vil_patched = patched
    return parse_model


def _layer_error(e: Exception, d: dict, code) -> YAMLLayerError | None:
    """A YAMLLayerError for an exception raised while parse_model built one of our modules, else None.

    The layer index, the module and its final argument list are read from the parser's frame in the traceback.
    """
    frame, tb = None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            frame = tb.tb_frame
        tb = tb.tb_next
    if frame is None:
        return None
    if isinstance(e, UserError):
        return None  # names its file already (a weights file of ViLBackbone)
    loc = frame.f_locals
    i, m, args = (loc.get(name) for name in _LOOP_LOCALS)
    if not isinstance(i, int) or m not in (*MODULES.values(), *PLAIN_MODULES.values()):
        return None
    rows = list(d.get("backbone", [])) + list(d.get("head", []))
    row = rows[i] if i < len(rows) else "?"
    where = f"{d.get('yaml_file', 'model YAML')}: layer {i} ({m.__name__}, YAML row {row})"
    params = list(inspect.signature(m).parameters)
    if isinstance(e, ViLArgumentError):
        return YAMLLayerError(f"{where}: argument '{e.argument}' must be {e.expected}, got {e.value!r}")
    if isinstance(e, TypeError) and isinstance(args, (list, tuple)):
        try:
            inspect.signature(m).bind(*args)
        except TypeError:
            if len(args) > len(params):
                extra = ", ".join(f"{a!r}" for a in args[len(params) :])
                return YAMLLayerError(
                    f"{where}: too many arguments: {m.__name__}({', '.join(params)}) got {len(args)} after Ultralytics "
                    f"inserted c1 and n; argument(s) {extra} after '{params[-1]}' are not accepted"
                )
            return YAMLLayerError(f"{where}: arguments {list(args)} do not fit {m.__name__}({', '.join(params)}): {e}")
    return YAMLLayerError(f"{where}: {type(e).__name__}: {e}", argument_problem=False)


def _quote_plain_args(d: dict) -> dict:
    """`d` with the string arguments of PLAIN_MODULES rows quoted (`repr`), so `parse_model`'s literal_eval gives
    the string back instead of failing on a path. A copy: `d` is the model's `yaml`, rebuilt from more than once."""
    def fix(row):
        if isinstance(row, (list, tuple)) and len(row) == 4 and row[2] in PLAIN_MODULES and isinstance(row[3], list):
            return [*row[:3], [repr(a) if isinstance(a, str) else a for a in row[3]]]
        return row

    if not isinstance(d, dict) or not any(
        isinstance(r, (list, tuple)) and len(r) == 4 and r[2] in PLAIN_MODULES
        for r in list(d.get("backbone") or []) + list(d.get("head") or [])
    ):
        return d
    return {**d, "backbone": [fix(r) for r in d.get("backbone") or []], "head": [fix(r) for r in d.get("head") or []]}


# ------------------------------------------------------------------------------------------- weight decay
_OUR_MODULES = tuple(MODULES.values()) + tuple(PLAIN_MODULES.values())
_PATCHED_OPT = "_ultra_vil_groups"


def no_decay_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters inside our YOLO modules that get no weight decay, by the classifier recipe's rule
    (`ultra_vil.layers.exempt_from_decay`: ViL norm gains, biases, learnable_skip, position embedding, CLS token,
    Vim's A_log and D). Ultralytics' stock rules already catch the biases and torch.nn norms."""
    out, seen = [], set()
    for top in model.modules():
        if not isinstance(top, _OUR_MODULES):
            continue
        for module in top.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                if layers.exempt_from_decay(name, p):
                    seen.add(id(p))
                    out.append(p)
    return out


def regroup_no_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Move `no_decay_parameters(model)` out of every group with weight decay into the no-decay group built for
    the same learning rate (Ultralytics' "bn" group); returns how many moved. Before the first step only."""
    targets = {id(p) for p in no_decay_parameters(model)}
    if not targets:
        return 0
    groups = optimizer.param_groups
    free = [g for g in groups if g.get("weight_decay", 0) == 0 and g.get("param_group") == "bn"]
    if not free:
        free = [g for g in groups if g.get("weight_decay", 0) == 0 and not g.get("use_muon")]
    if not free:
        return 0
    moved = 0
    for g in groups:
        if g.get("weight_decay", 0) == 0:
            continue
        keep = [p for p in g["params"] if id(p) not in targets]
        move = [p for p in g["params"] if id(p) in targets]
        if not move:
            continue
        dest = next((f for f in free if f.get("lr") == g.get("lr")), free[0])
        g["params"] = keep
        dest["params"].extend(move)
        moved += len(move)
    return moved


def patch_optimizer_groups() -> bool:
    """Wrap `BaseTrainer.build_optimizer` with `regroup_no_decay` once, if the trainer module is loaded; returns
    whether the wrapper is in place."""
    trainer_mod = _loaded_module("ultralytics.engine.trainer")
    trainer_cls = getattr(trainer_mod, "BaseTrainer", None)
    if trainer_cls is None:
        return False
    original = trainer_cls.build_optimizer
    if getattr(original, _PATCHED_OPT, False):
        return True

    @functools.wraps(original)
    def build_optimizer(self, model, *args, **kwargs):
        optimizer = original(self, model, *args, **kwargs)
        from ultralytics.utils.torch_utils import unwrap_model

        regroup_no_decay(optimizer, unwrap_model(model))
        return optimizer

    setattr(build_optimizer, _PATCHED_OPT, True)
    build_optimizer._ultra_vil_original = original
    trainer_cls.build_optimizer = build_optimizer
    return True


# ---------------------------------------------------------------------------------- float16 checkpoint guard
_PATCHED_SAVE = "_ultra_vil_fp16_guard"


def float16_warnings(model: nn.Module, seen: set[str]) -> list[str]:
    """Messages for the tensors of `model` that a float16 checkpoint saturates, if `model` holds an ultra-vil
    module (stock models are Ultralytics' business), each tensor named once per `seen` set (once per run)."""
    if not any(isinstance(m, _OUR_MODULES) for m in model.modules()):
        return []
    out = []
    for name, value in float16_overflows(model):
        if name not in seen:
            seen.add(name)
            out.append(overflow_message(name, value))
    return out


def _guarded_save(original: FunctionType) -> FunctionType:
    @functools.wraps(original)
    def save_model(self, *args, **kwargs):
        ema = getattr(getattr(self, "ema", None), "ema", None)
        if isinstance(ema, nn.Module):
            seen = self.__dict__.setdefault("_ultra_vil_fp16_seen", set())
            for message in float16_warnings(ema, seen):
                from ultralytics.utils import LOGGER

                LOGGER.warning(message)
        return original(self, *args, **kwargs)

    setattr(save_model, _PATCHED_SAVE, True)
    save_model._ultra_vil_original = original
    return save_model


def patch_checkpoint_guard() -> bool:
    """Wrap `BaseTrainer.save_model` once, if the trainer module is loaded, so that each save first warns (through
    Ultralytics' LOGGER, once per tensor and run) about every tensor of the float32 EMA beyond float16's range;
    returns whether the wrapper is in place. The checkpoint itself is written unchanged."""
    trainer_cls = getattr(_loaded_module("ultralytics.engine.trainer"), "BaseTrainer", None)
    if trainer_cls is None:
        return False
    if not getattr(trainer_cls.save_model, _PATCHED_SAVE, False):
        trainer_cls.save_model = _guarded_save(trainer_cls.save_model)
    return True


# ------------------------------------------------------------------------------------------- model YAMLs by name
# `yolo train model=yolov8n-vil.yaml` from any folder: Ultralytics' `yaml_model_load` resolves a model
# YAML with `check_yaml(name, hard=False) or check_yaml(<name without the scale letter>)`, and check_yaml (via
# check_file) takes an existing path as it is, else searches Ultralytics' own package folder. `tasks.check_yaml` is
# wrapped to try our packaged YAMLs after both of those, for bare file names only (no folder part), so a local file
# of the same name still wins (`./yolov8n-vil.yaml`, then `./yolov8-vil.yaml`), exactly as it does over stock names.
_PATCHED_YAML = "_ultra_vil_yaml_lookup"


def model_yaml_dirs() -> list:
    """Folders holding the packaged model YAMLs: `ultra_vil/cfg` in a wheel (pyproject.toml force-includes the
    repository's cfg/ there), else the repository's `cfg/` when ultra_vil runs from a checkout (editable install)."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1]  # .../ultra_vil
    dirs = [package / "cfg"]
    if (package.parent / "pyproject.toml").is_file():  # a source checkout, not site-packages
        dirs.append(package.parent / "cfg")
    return [d for d in dirs if d.is_dir()]


def packaged_yaml(name) -> str | None:
    """The packaged model YAML for a bare file name such as `yolov8-vil.yaml`, or None (also for any path with a
    folder part, which must exist as given, as for stock names)."""
    from pathlib import Path

    path = Path(str(name))
    if str(path.parent) != "." or path.suffix not in (".yaml", ".yml"):
        return None
    for d in model_yaml_dirs():
        if (d / path.name).is_file():
            return str(d / path.name)
    return None


def patch_yaml_lookup(tasks: ModuleType) -> None:
    """Wrap `tasks.check_yaml` once so that `yaml_model_load` finds our packaged YAMLs by name (see above)."""
    original = tasks.check_yaml
    if getattr(original, _PATCHED_YAML, False):
        return

    @functools.wraps(original)
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        found = original(file, suffix, hard=False)  # an existing path, or a YAML inside Ultralytics' package
        if found:
            return found
        ours = packaged_yaml(file)
        return ours if ours is not None else original(file, suffix, hard=hard)  # stock error when hard

    setattr(check_yaml, _PATCHED_YAML, True)
    check_yaml._ultra_vil_original = original
    tasks.check_yaml = check_yaml
