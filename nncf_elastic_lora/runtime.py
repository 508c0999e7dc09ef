"""OpenVINO runtime properties: validate them, read back what the runtime really uses, and say
which ones cannot have an effect on this machine.

OpenVINO accepts some properties that the hardware cannot honour (``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``
needs AMX) or silently resolves them to something else (``INFERENCE_PRECISION_HINT=bf16`` on a
CPU without bf16 runs f32). A benchmark that sets them must report that, not imply a speed-up.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PropertyValue = str | int | float | bool
# Properties of OpenVINO GenAI's LLMPipeline itself, not of the device plugin.
PIPELINE_PROPERTIES = frozenset({"ATTENTION_BACKEND"})
# (cpu flag, why) for properties that do nothing without that instruction set.
CPU_FLAG_REQUIREMENTS = {
    "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": (
        "amx_tile",
        "sparse weight decompression is implemented for AMX only",
    ),
}
REPORTED_PROPERTIES = (
    "INFERENCE_PRECISION_HINT",
    "KV_CACHE_PRECISION",
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
)


class RuntimePropertyError(ValueError):
    """A runtime property or device that OpenVINO does not accept here."""


def parse_properties(
    items: list[str] | None = None, file: str | Path | None = None
) -> dict[str, PropertyValue]:
    """``KEY=VALUE`` strings (JSON values where they parse) and/or a JSON file of properties."""
    props: dict[str, PropertyValue] = {}
    if file:
        data = json.loads(Path(file).read_text())
        if not isinstance(data, dict):
            raise RuntimePropertyError(f"{file}: runtime properties must be a JSON object of KEY: value")
        props.update(data)
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RuntimePropertyError(f"runtime property {item!r} is not KEY=VALUE")
        try:
            props[key] = json.loads(value)
        except json.JSONDecodeError:
            props[key] = value
    return props


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "CPU") -> dict[str, Any]:
    """What a benchmark ran on: CPU, cores, memory, device name, software versions."""
    import openvino as ov

    core = ov.Core()
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cores": os.cpu_count(),
        "amx": "amx_tile" in cpu_flags(),
        "avx512": "avx512f" in cpu_flags(),
        "openvino": ov.get_version(),
        "available_devices": core.available_devices,
        "device": device,
    }
    try:
        info["device_name"] = core.get_property(device, "FULL_DEVICE_NAME")
        info["optimization_capabilities"] = list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        pass
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import openvino_genai

        info["openvino_genai"] = openvino_genai.get_version()
    except ImportError:
        pass
    return info


def machine_class(info: dict[str, Any]) -> str:
    """``AMD EPYC, AVX-512 BF16``: the CPU of a :func:`machine_info` and the instruction set its decode speeds
    depend on. Machines of one CPU name differ (AVX2 only, or AVX-512 with BF16; AMX where present), and a
    speed ratio measured on one does not carry to another: INT4 weights decode faster than INT8 with AVX-512
    and slower with AVX2 alone."""
    if info.get("avx512"):
        isa = "AVX-512 BF16" if "BF16" in info.get("optimization_capabilities", []) else "AVX-512"
    else:
        isa = "AVX2"
    return f"{info.get('cpu', 'unknown CPU')}, {isa}" + (", AMX" if info.get("amx") else "")


def scoring_class(device: str = "CPU") -> str:
    """What an IR's scores depend on besides the IR: on a CPU its :func:`machine_class` (the runtime's default
    inference precision follows the instruction set: bf16 where the CPU has it, f32 elsewhere), on another
    device that device's name. Scores move between such machines: the plain INT8 IR of one training recipe
    (final train loss equal to 6 digits on both) scored 0.590 on an AVX-512 BF16 machine and 0.560 on an AVX2
    one, on the same 200 examples (docs/benchmarks.md)."""
    info = machine_info(device)
    if device.upper().startswith("CPU"):
        return machine_class(info)
    return f"{device}: {info.get('device_name', 'unknown device')}"


def check_device(device: str) -> None:
    import openvino as ov

    available = ov.Core().available_devices
    if not any(d == device or d.split(".")[0] == device for d in available):
        raise RuntimePropertyError(
            f"device {device!r} is not available here; available: {', '.join(available)}"
        )


def check_properties(
    properties: dict[str, PropertyValue], device: str = "CPU", model_xml: str | Path | None = None
) -> dict[str, Any]:
    """Validate ``properties`` for ``device``; return what the compiled model uses and notes.

    Raises :class:`RuntimePropertyError` naming the property for an unknown name or a value the
    plugin rejects. With ``model_xml``, the model is compiled with the properties and each
    reported property is read back (``effective``); ``notes`` lists properties that cannot take
    effect on this hardware or were resolved to another value. The read-back is of a plain
    ``compile_model`` of the IR (with the runtime options the IR carries); GenAI's pipeline may
    configure more on top (e.g. its paged-attention KV cache).
    """
    import openvino as ov

    check_device(device)
    core = ov.Core()
    supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    plugin_props = {k: v for k, v in properties.items() if k not in PIPELINE_PROPERTIES}
    for key, value in plugin_props.items():
        if key not in supported:
            raise RuntimePropertyError(
                f"runtime property {key!r} is not supported by OpenVINO on {device}; supported: "
                + ", ".join(sorted(supported))
            )
        try:
            core.set_property(device, {key: value})  # validated only once the plugin is loaded, as here
        except (RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()
            raise RuntimePropertyError(
                f"OpenVINO on {device} rejected runtime property {key}={value!r}: {first[-1] if first else exc}"
            ) from None
    notes = []
    flags = cpu_flags()
    for key in plugin_props:
        if device.startswith("CPU") and key in CPU_FLAG_REQUIREMENTS:
            flag, why = CPU_FLAG_REQUIREMENTS[key]
            if flag not in flags:
                notes.append(f"{key} has no effect on this CPU ({_cpu_name()}): {why}, and it has no {flag}")
    if device.startswith("CPU") and SPARSE_RATE in plugin_props and model_xml is not None:
        sparse = sparse_kernel_check(model_xml, plugin_props, flags)
        notes += [f"{SPARSE_RATE}: the sparse kernels cannot run: {c['name']} fails ({c['detail']})"
                  for c in sparse["conditions"] if c["met"] is False and c["name"] != "AMX"]  # fmt: skip (AMX: above)
    effective: dict[str, Any] = {}
    if model_xml is not None:
        compiled = core.compile_model(str(model_xml), device, plugin_props)
        for key in dict.fromkeys([*REPORTED_PROPERTIES, *plugin_props]):
            try:
                value = compiled.get_property(key)
                effective[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            except RuntimeError:
                continue
        for key, value in plugin_props.items():
            got = effective.get(key)
            if got is not None and str(value).lower() != got.lower() and not _same_number(value, got):
                notes.append(f"{key}: requested {value!r}, the compiled model uses {got!r}")
    for note in notes:
        log.warning(note)
    return {"requested": dict(properties), "effective": effective, "notes": notes}


SPARSE_RATE = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"


def _int8_weights(model: Any) -> list[Any]:
    """The 2-D INT8 constants of an OpenVINO model: the linear layers' weights of an INT8 or W8A8 IR."""
    return [op for op in model.get_ops() if op.get_type_name() == "Constant"
            and op.get_element_type().get_type_name() in ("i8", "u8") and len(op.get_output_shape(0)) == 2]  # fmt: skip


def sparse_kernel_check(
    model_xml: str | Path, properties: dict[str, PropertyValue] | None = None, flags: set[str] | None = None
) -> dict[str, Any]:
    """Which of the CPU plugin's conditions for its sparse-weight kernels hold for this IR on this machine.

    OpenVINO's CPU plugin decompresses sparse weights only (1) on a CPU with AMX, (2) in a model whose
    activations are INT8 too (FakeQuantize on activations: ``nncf.quantize``, W8A8; weight-only INT8/INT4
    never qualifies), (3) for weights whose two dimensions are multiples of 64, (4) when
    ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` is set, and then (5) for the layers whose share of zero
    weights is at least that rate. Returns ``{"conditions": [{"name", "met", "detail"}], "failing": [...],
    "can_pay": bool}`` (``met`` None: no rate to compare the zeros with); zeros are counted in signed INT8
    weights (zero code 0).
    """
    import numpy as np
    import openvino as ov

    flags = cpu_flags() if flags is None else flags
    props = properties or {}
    model = ov.Core().read_model(str(model_xml))
    activation_fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
                     and op.input_value(0).get_node().get_type_name() != "Constant"]  # fmt: skip
    weights = _int8_weights(model)
    aligned = [w for w in weights if all(d % 64 == 0 for d in w.get_output_shape(0))]
    rate = props.get(SPARSE_RATE)
    signed = [w for w in aligned if w.get_element_type().get_type_name() == "i8"]
    zeros = [float(np.mean(w.get_data() == 0)) for w in signed]
    sparse_enough = [z for z in zeros if rate is not None and z >= float(rate)]
    amx = {"amx_tile", "amx_int8"} <= flags
    conditions = [
        {"name": "AMX", "met": amx, "detail": f"{_cpu_name()}: amx_tile and amx_int8 " + ("present" if amx else "absent")},
        {"name": "INT8 activations", "met": bool(activation_fq),
         "detail": f"{len(activation_fq)} activation FakeQuantize ops (a W8A8 IR has them; weight-only INT8/INT4 none)"},
        {"name": "weight dims multiples of 64", "met": bool(aligned),
         "detail": f"{len(aligned)} of {len(weights)} INT8 weight matrices"},
        {"name": f"{SPARSE_RATE} set", "met": rate is not None,
         "detail": f"{rate!r}" if rate is not None else "not set (the kernels stay off)"},
        {"name": "weights at least that sparse", "met": None if rate is None else bool(sparse_enough),
         "detail": f"{len(sparse_enough)} of {len(signed)} aligned signed-INT8 weight matrices"
         + (f" (zeros: median {float(np.median(zeros)):.1%})" if zeros else "")},
    ]  # fmt: skip
    failing = [c["name"] for c in conditions if c["met"] is False]  # None: no rate to compare with
    return {"conditions": conditions, "failing": failing, "can_pay": not failing}


def _same_number(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except (TypeError, ValueError):
        return False
