"""The notebooks run top to bottom on tiny configs (the user runs them on the bundled model)."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIGS = {
    "lonas_walkthrough.ipynb": ROOT / "configs" / "tiny_lonas.json",
    "shears_walkthrough.ipynb": ROOT / "configs" / "tiny_shears.json",
    "sqft_walkthrough.ipynb": ROOT / "configs" / "tiny_sqft_qa_sparsepeft.json",
}


def _value(outputs: str, label: str) -> str:
    return outputs.split(label)[1].split()[0]


def check_shears(outputs: str, out: Path) -> None:
    assert float(_value(outputs, "max |logit difference|:")) < 1e-3  # stock peft = in-memory sub-network
    assert (out / "nls" / "sub_adapter_heuristic" / "adapter_config.json").is_file()
    assert "identical greedy tokens:" in outputs
    assert float(_value(outputs, "max |logit diff| vs torch (f32 hint):")) < 0.05  # int8: close, not equal
    assert (out / "openvino_notebook" / "openvino_detokenizer.xml").is_file()


def check_sqft(outputs: str, out: Path) -> None:
    assert _value(outputs, "zeros of the base lost by the merge:") == "0"
    assert float(_value(outputs, "SparsePEFT max |logit difference| merged vs unmerged:")) < 1e-5
    assert float(_value(outputs, "QA-SparsePEFT max |logit difference| merged vs trained forward:")) < 1e-5
    assert "zeros kept: True" in outputs
    assert "INT4 IR codes equal the merged codes:" in outputs
    assert (out / "ir_qa_sparsepeft" / "openvino_model.xml").is_file()
    assert "the dense FP32 IR at batch" in outputs
    # two task adapters on one INT4 base through OpenVINO GenAI, each checked against its in-graph IR
    assert "adapters switched per request: 2 on one int4 base" in outputs
    manifest = json.loads((out / "genai_int4" / "genai_adapters.json").read_text())
    assert [a["name"] for a in manifest["adapters"]] == ["basic_arithmetic", "arc_easy"]
    assert all(a["check"]["passed"] for a in manifest["adapters"])


def check_lonas(outputs: str, out: Path) -> None:
    assert float(_value(outputs, "max logit change from ordering:")) < 1e-4  # a permutation: rounding only
    assert float(_value(outputs, "max |logit difference| extracted vs super-network:")) < 1e-5
    saved = json.loads((out / "extracted" / "config.json").read_text())
    assert len(set(saved["intermediate_size_per_layer"])) > 1  # the layers got different widths
    assert (out / "ir" / "openvino_model.xml").is_file()
    identical, prompts = _value(outputs, "identical greedy tokens (GenAI):").split("/")
    assert int(identical) == int(prompts) > 0


CHECKS = {
    "lonas_walkthrough.ipynb": check_lonas,
    "shears_walkthrough.ipynb": check_shears,
    "sqft_walkthrough.ipynb": check_sqft,
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NEL_NOTEBOOK_CONFIG", str(CONFIGS[path.name]))
    monkeypatch.setenv("NEL_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    CHECKS[path.name](outputs, tmp_path / "out")
