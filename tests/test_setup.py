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
    pat = re.compile(r"^\s*(import|from)\s+(torch|transformers|tensorflow|jax)\b", re.M)
    hits = [str(p) for p in (ROOT / "minialbert").rglob("*.py") if pat.search(p.read_text())]
    assert not hits, hits
