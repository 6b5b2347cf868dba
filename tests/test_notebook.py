"""examples/notebook.ipynb runs in a fresh Jupyter kernel (nbclient, headless), as a new user would.

No ``%matplotlib inline``: every plot cell must still produce an ``image/png`` output, every
report cell a ``text/html`` one (and a text view that is a table, not a dump of matrices),
and no cell may warn about missing ipywidgets ("IProgress not found").
"""

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"
NEEDS = ("nbclient", "ipykernel", "flax", "torch", "optax", "matplotlib")


@pytest.fixture(scope="module")
def executed():
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the notebook test needs {', '.join(missing)} (pip install 'fluxhess[test,flax]' and torch)")
    import nbformat
    from nbclient import NotebookClient

    import fluxhess

    # The kernel imports the fluxhess these tests import (a source checkout or the installed one).
    package_root = str(Path(fluxhess.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)
    return nb


def _tagged(nb, tag):
    cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    assert cells, f"no cell tagged {tag!r}"
    return cells


def _data(cell) -> list[dict]:
    return [o["data"] for o in cell.outputs if o.output_type in ("execute_result", "display_data")]


def test_plot_cells_render_as_images_without_matplotlib_inline(executed):
    assert not any("%matplotlib" in c.source for c in executed.cells if c.cell_type == "code")
    for cell in _tagged(executed, "plot"):
        assert any("image/png" in d for d in _data(cell)), f"no image/png from: {cell.source}"


def test_report_cells_render_as_html_and_read_as_tables(executed):
    for cell in _tagged(executed, "report"):
        data = _data(cell)
        assert any("text/html" in d and "<" in d["text/html"] for d in data), f"no text/html from: {cell.source}"
        text = "".join(d.get("text/plain", "") for d in data)
        assert "array(" not in text and "=array" not in text, f"the text view dumps arrays: {text[:300]}"


def test_no_cell_fails_or_warns_about_ipywidgets(executed):
    for cell in (c for c in executed.cells if c.cell_type == "code"):
        for out in cell.outputs:
            assert out.output_type != "error", f"{cell.source}\n{out.get('ename')}: {out.get('evalue')}"
            assert "IProgress" not in out.get("text", ""), out.get("text")


def test_the_seed_answers_and_the_pinn_are_printed(executed):
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    assert "relative L2 error against sin(πx)·sin(πy)" in text
    seed_1 = next(c for c in executed.cells if "u_xx_jax" in c.source)
    # The answer is the cell's last printed line (whatever else starting a backend printed before it).
    printed = "".join(o["text"] for o in seed_1.outputs if o.output_type == "stream" and o.get("name") == "stdout")
    difference = float(printed.strip().splitlines()[-1].split()[-1])
    assert difference < 1e-12
