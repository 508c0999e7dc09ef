"""Does the exported IR compute what the torch model computes?

Per prompt: the logits over the prompt's tokens from torch and from the IR (optimum-intel, with
``INFERENCE_PRECISION_HINT=f32``, ``KV_CACHE_PRECISION=f32`` and no dynamic quantization of
activations, so the runtime does not lower precision and the difference is the weights'), and
greedy generations
from torch, from the IR through optimum-intel, and from the IR through OpenVINO GenAI's
``LLMPipeline``. An fp32/fp16 IR should match torch token for token; an int8/int4 IR differs by
its quantization error, which this measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..evaluation import check_finite_logits
from ..models import load_openvino_model

# optimum-intel marks fp32/fp16 IRs to keep the KV cache in f16, and the CPU plugin quantizes activations
# to int8 for int4/int8 weights even under an f32 hint (~4e-3 of logit error); a like-for-like
# comparison turns both off.
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Question: What is 12 + 7?\nAnswer:",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)


def _strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Tokens up to the first end-of-sequence token (runtimes differ on whether they return it)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def _first_mismatch(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _genai_tokens(pipe: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    import numpy as np
    import openvino as ov
    import openvino_genai

    inputs = openvino_genai.TokenizedInputs(
        ov.Tensor(np.array([ids], dtype=np.int64)), ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))
    )
    config = pipe.get_generation_config()  # the model's generation_config.json, as torch and optimum use
    config.max_new_tokens = max_new_tokens
    config.do_sample = False
    return [int(t) for t in pipe.generate(inputs, config).tokens[0]]


@torch.no_grad()
def compare_ir_with_torch(
    ir_dir: str | Path,
    torch_model: Any,
    tokenizer: Any,
    prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 16,
    device: str = "CPU",
    genai: bool = True,
) -> dict[str, Any]:
    """Logit differences and greedy-generation agreement of an exported IR and its torch source."""
    ir_dir = Path(ir_dir)
    ov_model, _ = load_openvino_model(ir_dir, device, F32, tokenizer=False)  # fed the torch tokenizer's ids
    if genai:
        import openvino_genai

        pipe = openvino_genai.LLMPipeline(str(ir_dir), device, **F32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = getattr(torch_model, "generation_config", None) and torch_model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {
        tokenizer.eos_token_id
    }
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        mask = torch.ones_like(x)
        ref = torch_model(input_ids=x, attention_mask=mask).logits.float()
        check_finite_logits(ref, f"the torch model's logits on the parity prompt {prompt!r}")
        got = torch.as_tensor(ov_model(input_ids=x, attention_mask=mask).logits).float()
        check_finite_logits(got, f"the exported IR's logits on the parity prompt {prompt!r}")
        diff = (ref - got).abs()
        gen = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        torch_out = torch_model.generate(input_ids=x, attention_mask=mask, **gen)[0, len(ids) :].tolist()
        torch_tokens = _strip_eos(torch_out, eos_ids)
        ov_out = ov_model.generate(input_ids=x, attention_mask=mask, **gen)[0, len(ids) :].tolist()
        ov_tokens = _strip_eos(ov_out, eos_ids)
        row = {
            "prompt": prompt,
            "prompt_tokens": len(ids),
            "logits_max_abs_diff": float(diff.max()),
            "logits_mean_abs_diff": float(diff.mean()),
            "logits_max_abs": float(ref.abs().max()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
            "torch_tokens": torch_tokens,
            "optimum_tokens": ov_tokens,
            "optimum_first_mismatch": _first_mismatch(torch_tokens, ov_tokens),
            "torch_text": tokenizer.decode(torch_tokens, skip_special_tokens=True),
        }
        if genai:
            genai_tokens = _strip_eos(_genai_tokens(pipe, ids, max_new_tokens), eos_ids)
            row["genai_tokens"] = genai_tokens
            row["genai_first_mismatch"] = _first_mismatch(torch_tokens, genai_tokens)
        rows.append(row)
    summary = {
        "prompts": len(rows),
        "max_new_tokens": max_new_tokens,
        "device": device,
        "properties": F32,
        "logits_max_abs_diff": max(r["logits_max_abs_diff"] for r in rows),
        "top1_agreement": sum(r["top1_agreement"] for r in rows) / len(rows),
        "greedy_identical_optimum": sum(r["optimum_first_mismatch"] is None for r in rows),
    }
    if genai:
        summary["greedy_identical_genai"] = sum(r["genai_first_mismatch"] is None for r in rows)
    return {"summary": summary, "prompts": rows}
