"""The README's test command is what CI runs, and the library never imports a reference."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_one():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "pip install" in run_cmd and "minialbert" in run_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, f"{test_cmd!r} is not a line of .ci/run"


def test_library_never_imports_torch_or_transformers():
    """The one exception: reading a pytorch_model.bin (a pickle) needs torch; hf._read_bin
    imports it lazily, only when the caller allowed unpickling."""
    import ast
    banned = {"torch", "transformers", "tensorflow", "jax"}
    hits = []
    for p in (ROOT / "minialbert").rglob("*.py"):
        tree = ast.parse(p.read_text())
        allowed = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and p.name == "hf.py" and fn.name == "_read_bin":
                allowed |= {id(n) for n in ast.walk(fn)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in banned for n in names) and id(node) not in allowed:
                hits.append(f"{p.name}:{node.lineno}")
    assert not hits, hits
