"""Process-level fault campaign (issue 23): kill -9 and resume, a killed DDP process, SIGTERM, two writers,
a read-only disk, non-ASCII paths. Each case runs the CLI in subprocesses and prints one JSON line.

    .venv/bin/python bench/fault_campaign.py [TREE] [case,case,...]   # TREE "" = this checkout

TREE is a checkout whose ``nncf_elastic_lora`` is run (default: this one), to compare with older code.
Outputs go to /tmp/fault-campaign/<tree name>. ``read_only`` and the tmpfs cases need root (mount).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else str(REPO)
ONLY = sys.argv[2].split(",") if len(sys.argv) > 2 else None
ROOT = Path(f"/tmp/fault-campaign/{Path(TREE).name}")
CFG = str(REPO / "configs" / "tiny_shears.json")
ENV = {**os.environ, "PYTHONPATH": TREE, "HF_HUB_OFFLINE": "1"}
PY = sys.executable


def cli(*args, wait=True, log=None):
    cmd = [PY, "-m", "nncf_elastic_lora", *map(str, args)] + (
        [] if args[0] == "benchmark" else ["--no-progress"]
    )
    out = open(log, "w") if log else subprocess.PIPE
    p = subprocess.Popen(
        cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    if not wait:
        return p
    text, _ = p.communicate()
    return p.returncode, text or ""


def summary(rc, text):
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    return {
        "rc": rc,
        "error_lines": len(errors),
        "traceback": "Traceback" in text,
        "error": errors[0][:220] if errors else None,
    }


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def leftovers(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if ".tmp" in p.name)


def wait_for(pred, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


def case_kill9_train_resume():
    ref, out = ROOT / "train_ref", ROOT / "train_killed"
    cli("train", "--config", CFG, "--output", ref, "--set", "bootstrapNAS.training.save_steps=1")
    p = cli(
        "train",
        "--config",
        CFG,
        "--output",
        out,
        "--set",
        "bootstrapNAS.training.save_steps=1",
        wait=False,
        log=ROOT / "k.log",
    )
    wait_for(lambda: (out / "checkpoints" / "checkpoint-3").exists())
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = sorted(x.name for x in (out / "checkpoints").iterdir())
    rc, text = cli(
        "train", "--config", CFG, "--output", out, "--set", "bootstrapNAS.training.save_steps=1", "--resume"
    )
    same = sha(ref / "super_adapter/adapter_model.safetensors") == sha(
        out / "super_adapter/adapter_model.safetensors"
    )
    return {**summary(rc, text), "killed_with": killed_at, "bit_identical_super_adapter": same}


def _without(data, keys):
    if isinstance(data, dict):
        return {k: _without(v, keys) for k, v in data.items() if k not in keys}
    return [_without(v, keys) for v in data] if isinstance(data, list) else data


def case_kill9_run_resume(stage="export"):
    ref, out = ROOT / "run_ref", ROOT / f"run_killed_{stage}"
    if not (ref / "report.json").exists():
        cli("run", CFG, "--output", ref)
    p = cli("run", CFG, "--output", out, wait=False, log=ROOT / f"run_{stage}.log")
    wait_for(lambda: f"stage {stage}:" in (ROOT / f"run_{stage}.log").read_text())
    time.sleep(1.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    rc, text = cli("run", CFG, "--output", out, "--resume")

    def scores(report: Path) -> str:  # what the run measured, without its timings and path-bearing contexts
        data = {
            k: v for k, v in json.loads(report.read_text()).items() if k in ("evaluation", "search", "train")
        }
        return json.dumps(
            _without(data, {"time_s", "seconds", "wall_s", "context"}), sort_keys=True, default=str
        )

    same = rc == 0 and scores(ref / "report.json") == scores(out / "report.json")
    ir_same = rc == 0 and sha(ref / "openvino/openvino_model.bin") == sha(out / "openvino/openvino_model.bin")
    return {
        **summary(rc, text),
        "same_results": same,
        "bit_identical_ir": ir_same,
        "leftovers": leftovers(out),
    }


def case_kill9_run_resume_train():
    return case_kill9_run_resume("train")


def case_sigterm_export():
    base = ROOT / "sparse"
    if not base.exists():
        cli("sparsify", "--config", CFG, "--output", base)
    out = ROOT / "ir_term"
    p = cli("export", "--config", CFG, "--model", base, "--output", out, wait=False, log=ROOT / "term.log")
    wait_for(lambda: leftovers(ROOT) != [] and any("ir_term" in x for x in leftovers(ROOT)))
    time.sleep(2)
    os.kill(p.pid, signal.SIGTERM)
    p.wait()
    return {
        "rc": p.returncode,
        "output_left": out.exists(),
        "leftovers": [x for x in leftovers(ROOT) if "ir_term" in x],
        "last_line": (ROOT / "term.log").read_text().strip().splitlines()[-1][:160],
    }


def case_two_writers():
    out = ROOT / "two"
    p1 = cli("run", CFG, "--output", out, wait=False, log=ROOT / "w1.log")
    wait_for(lambda: "stage sparsify:" in (ROOT / "w1.log").read_text())
    rc2, text2 = cli("sparsify", "--config", CFG, "--output", out, "--overwrite")
    rc3, text3 = cli("run", CFG, "--output", out, "--resume")
    p1.wait()
    return {
        "first_rc": p1.returncode,
        "second_overwrite": summary(rc2, text2),
        "third_resume": summary(rc3, text3),
        "output_complete": (out / "report.json").exists(),
    }


def case_read_only():
    mnt = ROOT / "ro"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=10m", "tmpfs", str(mnt)], check=True)
    try:
        return summary(*cli("sparsify", "--config", CFG, "--output", mnt / "out"))
    finally:
        subprocess.run(["umount", str(mnt)])


def case_unicode_paths():
    d = ROOT / "dír with spaces" / "ünï cödé"
    d.mkdir(parents=True, exist_ok=True)
    res = {}
    for name, args in (
        ("sparsify", ("sparsify", "--config", CFG, "--output", d / "sparse")),
        ("export", ("export", "--config", CFG, "--model", d / "sparse", "--output", d / "ir ö")),
        (
            "eval_ir",
            (
                "eval",
                "--config",
                CFG,
                "--model",
                d / "ir ö",
                "--output",
                d / "eval",
                "--set",
                "evaluation.limit=4",
            ),
        ),
        (
            "benchmark",
            (
                "benchmark",
                "--model",
                d / "ir ö",
                "--runtime",
                "genai",
                "--output",
                d / "bench",
                "--repeats",
                "1",
            ),
        ),
    ):
        res[name] = summary(*cli(*args))
    return res


def case_ddp_kill_one():
    ref, out = ROOT / "ddp_ref", ROOT / "ddp_killed"
    torchrun = [
        str(Path(PY).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "nncf_elastic_lora",
    ]
    args = [
        "train",
        "--config",
        CFG,
        "--no-progress",
        "--set",
        "bootstrapNAS.training.save_steps=1",
        "--set",
        "bootstrapNAS.training.gradient_accumulation_steps=1",
    ]
    r = subprocess.run([*torchrun, *args, "--output", str(ref)], env=ENV, capture_output=True, text=True)
    if r.returncode:
        return {"reference_failed": r.stdout[-500:] + r.stderr[-500:]}
    p = subprocess.Popen(
        [*torchrun, *args, "--output", str(out)],
        env=ENV,
        stdout=open(ROOT / "ddp.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: (out / "checkpoints" / "checkpoint-2").exists())
    workers = subprocess.run(
        ["pgrep", "-f", f"nncf_elastic_lora train.*{out}"], capture_output=True, text=True
    ).stdout.split()
    kids = [w for w in workers if int(w) != p.pid]
    os.kill(int(kids[-1]), signal.SIGKILL)
    p.wait(timeout=300)
    killed = {"rc": p.returncode, "super_adapter_written": (out / "super_adapter").exists()}
    r2 = subprocess.run(
        [*torchrun, *args, "--output", str(out), "--resume"], env=ENV, capture_output=True, text=True
    )
    same = r2.returncode == 0 and sha(ref / "super_adapter/adapter_model.safetensors") == sha(
        out / "super_adapter/adapter_model.safetensors"
    )
    return {"killed": killed, "resume_rc": r2.returncode, "bit_identical_super_adapter": same}


CASES = {k[5:]: v for k, v in dict(globals()).items() if k.startswith("case_")}
if __name__ == "__main__":
    unknown = sorted(set(ONLY or ()) - set(CASES))
    if unknown:
        sys.exit(f"error: unknown case(s) {', '.join(unknown)}; the cases are: {', '.join(CASES)}")
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    for name, fn in CASES.items():
        if ONLY and name not in ONLY:
            continue
        t = time.time()
        try:
            result = fn()
        except Exception as exc:  # the campaign itself must go on
            result = {"campaign_error": repr(exc)[:300]}
        print(json.dumps({"case": name, "s": round(time.time() - t), **result}, default=str), flush=True)
