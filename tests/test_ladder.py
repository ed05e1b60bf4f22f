"""The import ladder: every module of minialbert imports only modules on its own rung or
below — at the top of the file or inside a function alike — and the imports within a rung
form no cycle. A module added to the package must be given a rung here."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "minialbert"

# rung: modules (a package's submodules share its rung). Lower rungs know nothing of higher.
LADDER = [
    ("settings and tools that import nothing of minialbert",
     {"config", "options", "normalize", "memory", "gradcheck", "optim", "optim_kernels",
      "numba_cache"}),
    ("the settings of a run (from the model config, the options and the optimizers)",
     {"settings"}),
    ("the parameters: names, shapes, initialisation, counts", {"params"}),
    ("kernels", {"kernels"}),
    ("layers", {"layers"}),
    ("model: embeddings, encoder, pooler (AlbertModel)", {"model"}),
    ("heads: pretraining, masked LM, fine-tuning; the registry of model classes", {"heads"}),
    ("file formats and data: checkpoints, the run folder, Hugging Face folders, tokenizer, "
     "corpus, data",
     {"checkpoint", "rundir", "hf", "tokenizer", "corpus", "data", "tasks"}),
    ("running: data parallelism, the training step and loop, training, fine-tuning, inference, tools",
     {"distributed", "loop", "evaluation", "train", "finetune", "inference", "demo", "profiler", "book",
      "lookinside", "plots"}),
    ("the command line", {"cli"}),
]
RUNG = {m: i for i, (_, mods) in enumerate(LADDER) for m in mods}


def _module_of(path):
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imports(path):
    """The top-level minialbert modules ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = path.relative_to(ROOT).parts[:-1]  # () for minialbert/x.py, ("kernels",) inside it
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "minialbert":
                    parts = node.module.split(".")[1:]
                    out.add(parts[0] if parts else None)
                    if not parts:
                        out.update(a.name for a in node.names)
                continue
            base = list(pkg[:len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0])
            else:  # from . import a, b
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "minialbert" and "." in a.name:
                    out.add(a.name.split(".")[1])
    return out - {None}


def _graph():
    g = {}
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue  # the package's front door, which may import anything
        mod = _module_of(path)
        g.setdefault(mod, set()).update(_imports(path) - {mod})
    return g


def test_every_module_has_a_rung():
    assert set(_graph()) - set(RUNG) == set(), "give the new module a rung in LADDER"


def test_no_import_runs_up_the_ladder():
    bad = [f"{m} (rung {RUNG[m]}) imports {t} (rung {RUNG[t]})"
           for m, targets in _graph().items() for t in sorted(targets) if RUNG[t] > RUNG[m]]
    assert bad == []


def test_no_cycle_within_a_rung():
    g = _graph()
    seen, on_path = set(), []

    def visit(m):
        if m in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(m):] + [m]))
        if m in seen:
            return
        on_path.append(m)
        for t in g.get(m, ()):
            if RUNG[t] == RUNG[m]:
                visit(t)
        on_path.pop()
        seen.add(m)

    for m in g:
        visit(m)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function, and ``from .. import``, count."""
    sub = ROOT / "kernels" / "_base.py"
    assert "options" in _imports(sub)  # from ..options import OptionError, inside a function
    assert {"kernels", "layers"} <= _imports(ROOT / "model.py")


def test_config_names_the_activations_the_kernels_implement():
    from minialbert.config import ACTIVATION_NAMES
    from minialbert.kernels.act import ACTIVATIONS
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
