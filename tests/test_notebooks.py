"""The notebooks run top to bottom on the tiny config (the user runs them on the bundled model)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TINY = Path(__file__).parent.parent / "configs" / "tiny_shears.json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NEL_NOTEBOOK_CONFIG", str(TINY))
    monkeypatch.setenv("NEL_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    diff = float(outputs.split("max |logit difference|:")[1].split()[0])
    assert diff < 1e-3  # the stock-peft sub-adapter reproduces the in-memory sub-network
    assert (tmp_path / "out" / "nls" / "sub_adapter_heuristic" / "adapter_config.json").is_file()
    assert "identical greedy tokens:" in outputs
    ir_diff = float(outputs.split("max |logit diff| vs torch (f32 hint):")[1].split()[0])
    assert ir_diff < 0.05  # int8 weights: close to torch, not equal
    assert (tmp_path / "out" / "openvino_notebook" / "openvino_detokenizer.xml").is_file()
