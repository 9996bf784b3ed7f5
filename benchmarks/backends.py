"""CPU backends for the shipped CNNs: torch eager fp32 vs ONNX Runtime vs OpenVINO.

Prints JSON. For each model, the generator is exported once with `torch.onnx.export`
(dynamic batch, height and width) and run on the same LR tiles, cut from the bundled
H&E sample slide, by:
- `torch`: eager fp32, channels_last, `torch.inference_mode` (what the Predictor runs);
- `onnxruntime`: the ONNX file, CPU execution provider, all graph optimisations;
- `openvino`: the same ONNX file compiled for the CPU with fp32 inference precision
  (OpenVINO would otherwise pick bf16 on CPUs with bf16 instructions);
- with `--int8`: the ONNX file quantised statically (QDQ, int8 weights per channel,
  uint8 activations, calibrated on other tiles of the slide; the output stage - last
  conv, pixel shuffle, bicubic skip, add - stays fp32), run by ONNX Runtime and by
  OpenVINO; and `openvino-bf16` (OpenVINO's default precision) where the CPU has
  bf16 instructions.
All backends use the same thread count (torch's, or `--threads`).

Two tile cases: 4 tiles of 64 + 2 halo LR px as one batch (a small viewer tile) and
one tile of 256 + 2 halo (the viewer's CPU tile). The sequence is a warm-up of every
backend, then `--repeats` rounds in which each backend runs each case once, in an
order rotated every round, so drift of the machine's load touches all alike; the
report gives the median (and best) milliseconds per tile, the speed ratio to torch,
and the largest difference of the uint8 outputs (clamped, x255, rounded, halo
cropped) from torch's. A quality check runs each backend on a real tile: 1024 x 1024
HR px of the slide, degraded as the model expects (its metadata 'degradation'), and
reports PSNR against the HR and the change from torch fp32.

    python benchmarks/backends.py [--models srgan-sqe-he-x4 srgan-sqe-he-x4-clean]
                                  [--repeats 7] [--threads 2] [--int8]

Needs `pip install onnx onnxscript onnxruntime openvino` (a missing backend is skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_srgan_sqe.degradation import degrade_with
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.metrics import psnr
from napari_srgan_sqe.models.modelfile import load_model

SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "napari_srgan_sqe"
    / "data"
    / "CMU-1-Small-Region.svs"
)

Runner = Callable[[np.ndarray], np.ndarray]


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def to_uint8(y: np.ndarray, crop: int) -> np.ndarray:
    """Network output (N, 3, H, W) float -> uint8, `crop` HR px removed from each side."""
    if crop:
        y = y[:, :, crop:-crop, crop:-crop]
    return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def lr_tiles(lr0: Any, side: int, corners: list[tuple[int, int]]) -> np.ndarray:
    """float32 NCHW tiles in [0, 1] of `side` px at the given (y, x) corners of level 0."""
    tiles = [np.asarray(lr0[y : y + side, x : x + side]) for y, x in corners]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def export_onnx(model: torch.nn.Module, path: Path, side: int) -> None:
    """The generator to ONNX with dynamic batch, height and width (log to stderr)."""
    x = torch.rand(1, 3, side, side)
    dims = (
        {
            0: torch.export.Dim("n", min=1, max=64),
            2: torch.export.Dim("h", min=16, max=4096),
            3: torch.export.Dim("w", min=16, max=4096),
        },
    )
    with contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            model.eval(),
            (x,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=dims,
            dynamo=True,
            external_data=False,
        )


def torch_runner(model: torch.nn.Module) -> Runner:
    net = model.eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return net(t).numpy()

    return run


def ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def ov_runner(path: Path, threads: int, precision: str | None = "f32") -> Runner:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[compiled.output(0)], copy=True)

    return run


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tail_nodes(path: Path) -> list[str]:
    """Names of the output stage: the last conv, the pixel shuffle, the bicubic skip and
    the add that produces the output (kept in fp32: the output's 8-bit steps are as
    fine as uint8 activations, so quantising it costs up to 26 levels of 255)."""
    import onnx

    graph = onnx.load(str(path)).graph
    out = {o.name for o in graph.output}
    names = {n.name for n in graph.node if n.op_type in ("DepthToSpace", "Resize")}
    names |= {n.name for n in graph.node if out & set(n.output)}
    shuffle_in = {i for n in graph.node if n.op_type == "DepthToSpace" for i in n.input}
    names |= {n.name for n in graph.node if n.op_type == "Conv" and shuffle_in & set(n.output)}
    return sorted(names)


def quantize_int8(src: Path, dst: Path, calib: np.ndarray) -> list[str]:
    """Static QDQ quantisation (int8 weights per channel, uint8 activations) of all but
    the output stage; returns the names of the nodes left in fp32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    keep = tail_nodes(src)
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
        )
    return keep


def bench_model(name: str, slide_lr0: Any, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model = load_model(name)
    halo, s = model.halo, model.scale
    gen = model.config.generator
    h, w = int(slide_lr0.shape[0]), int(slide_lr0.shape[1])
    cy, cx = h // 2, w // 2

    # timing inputs: LR pixels of the slide itself, near its centre
    small = 64 + 2 * halo
    big = 256 + 2 * halo
    cases = {
        f"4 x {small} px (64 + 2 halo), batch 4": (
            lr_tiles(
                slide_lr0,
                small,
                [(cy - small, cx - small), (cy - small, cx), (cy, cx - small), (cy, cx)],
            ),
            halo * s,
        ),
        f"1 x {big} px (256 + 2 halo), batch 1": (
            lr_tiles(slide_lr0, big, [(cy - big // 2, cx - big // 2)]),
            halo * s,
        ),
    }
    # quality input: HR 1024 px of the slide, degraded as the model was trained
    degradation = model.metadata.get("degradation", "clean") or "clean"
    hr = np.asarray(slide_lr0[h // 4 : h // 4 + 1024, w // 4 : w // 4 + 1024])
    lr = degrade_with(hr, degradation, s, seed=0)
    lr_pad = np.pad(lr, ((halo, halo), (halo, halo), (0, 0)), mode="symmetric")
    quality_x = np.ascontiguousarray(lr_pad.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0

    onnx_path = tmp / f"{name}.onnx"
    t0 = time.perf_counter()
    export_onnx(model.generator, onnx_path, small)
    export_s = time.perf_counter() - t0

    runners: dict[str, Runner] = {"torch": torch_runner(model.generator)}
    skipped: dict[str, str] = {}
    int8_fp32_nodes: list[str] = []
    if version("onnxruntime"):
        runners["onnxruntime"] = ort_runner(onnx_path, args.threads)
    else:
        skipped["onnxruntime"] = "not installed"
    if version("openvino"):
        runners["openvino"] = ov_runner(onnx_path, args.threads, "f32")
        if args.int8 and cpu_has_bf16():
            runners["openvino-bf16"] = ov_runner(onnx_path, args.threads, None)
    else:
        skipped["openvino"] = "not installed"
    if args.int8 and version("onnxruntime"):
        calib = lr_tiles(
            slide_lr0,
            small,
            [(y, x) for y in (small, h - 2 * small) for x in (small, w // 2, w - 2 * small)],
        )
        q_path = tmp / f"{name}-int8.onnx"
        int8_fp32_nodes = quantize_int8(onnx_path, q_path, calib)
        runners["onnxruntime-int8"] = ort_runner(q_path, args.threads)
        if version("openvino"):
            runners["openvino-int8"] = ov_runner(q_path, args.threads, "f32")

    names = list(runners)
    for x, _ in cases.values():  # warm-up: two calls per backend and case
        for b in names:
            runners[b](x)
            runners[b](x)
    times: dict[str, dict[str, list[float]]] = {c: {b: [] for b in names} for c in cases}
    cpu: dict[str, dict[str, list[float]]] = {c: {b: [] for b in names} for c in cases}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for c, (x, _) in cases.items():
            for b in order:
                t0, c0 = time.perf_counter(), time.process_time()
                runners[b](x)
                times[c][b].append(time.perf_counter() - t0)
                cpu[c][b].append(time.process_time() - c0)

    result_cases: dict[str, Any] = {}
    for c, (x, crop) in cases.items():
        n = len(x)
        ref = to_uint8(runners["torch"](x), crop)
        torch_ms = statistics.median(times[c]["torch"]) * 1e3 / n
        rows = {}
        for b in names:
            out = to_uint8(runners[b](x), crop)
            diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
            ms = statistics.median(times[c][b]) * 1e3 / n
            rows[b] = {
                "ms_per_tile": round(ms, 2),
                "best_ms_per_tile": round(min(times[c][b]) * 1e3 / n, 2),
                "cpu_ms_per_tile": round(statistics.median(cpu[c][b]) * 1e3 / n, 2),
                "speedup_vs_torch": round(torch_ms / ms, 3),
                "max_abs_diff_uint8": int(diff.max()),
                "share_differing": round(float((diff > 0).mean()), 6),
                "runs_ms_per_tile": [round(t * 1e3 / n, 1) for t in times[c][b]],
            }
        result_cases[c] = rows

    ref_sr = to_uint8(runners["torch"](quality_x), halo * s)[0].transpose(1, 2, 0)
    ref_psnr = psnr(ref_sr, hr)
    quality = {}
    for b in names:
        sr = to_uint8(runners[b](quality_x), halo * s)[0].transpose(1, 2, 0)
        p = psnr(sr, hr)
        quality[b] = {
            "psnr_vs_hr_db": round(p, 3),
            "psnr_change_vs_torch_db": round(p - ref_psnr, 3),
            "psnr_vs_torch_output_db": round(psnr(sr, ref_sr), 2) if b != "torch" else None,
            "max_abs_diff_uint8": int(np.abs(sr.astype(np.int16) - ref_sr).max()),
        }
    return {
        "arch": gen.arch,
        "blocks": gen.n_blocks,
        "channels": gen.channels,
        "halo": halo,
        "degradation": degradation,
        "onnx_export_s": round(export_s, 2),
        "skipped": skipped,
        "int8_nodes_kept_fp32": int8_fp32_nodes,
        "cases": result_cases,
        "quality_tile": {
            "hr_px": list(hr.shape[:2]),
            "lr": f"{degradation} degradation of the HR (seed 0)",
            "backends": quality,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["srgan-sqe-he-x4", "srgan-sqe-he-x4-clean"])
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="default: torch's thread count")
    ap.add_argument("--int8", action="store_true", help="add int8 (QDQ) and OpenVINO bf16 rows")
    ap.add_argument("--input", type=Path, default=SAMPLE, help="slide for the tiles")
    args = ap.parse_args()
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)

    lr0 = open_slide(args.input).levels[0]
    out: dict[str, Any] = {
        "input": args.input.name,
        "threads": args.threads,
        "repeats": args.repeats,
        "versions": {
            p: version(p) for p in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino")
        },
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": cpu_has_bf16(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out["models"][name] = bench_model(name, lr0, args, Path(tmp))
            print(f"{name}: done", file=sys.stderr, flush=True)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
