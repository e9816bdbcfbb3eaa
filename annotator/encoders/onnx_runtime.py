"""How an encoder's network runs: on torch, or on ONNX Runtime on a CPU (exported once, cached,
optionally int8). `network_forward` is the one place that chooses.

Why: on a 2-core CPU ONNX Runtime's fused kernels run EfficientNet-Lite0 about 4× and MiniLM about
1.1× faster than torch eager (measured in ``bench/bench_encode.py``), with vectors equal to the
torch ones (cosine ≥ 0.999 per item; tested). faster-whisper already brings ONNX Runtime in.

An export is keyed by what decides its graph: the encoder's name, the torch and exporter versions,
and the opset; it is written once per machine under a file lock (workers starting together export
it once) and reused by every process after.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotator.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
VECTORS = {"vectors": {0: "batch"}}  # the graph's outputs and their varying axes, for one-output networks
EXPORT_FORMAT = 3  # bump when the exported graphs change for the same encoder name (2: part-level outputs; 3: int8 recipes)
RUNTIMES = ("auto", "torch", "onnx")
INT8 = "onnx-int8"  # the runtime an int8 export reports
SEVEN_BIT = "w7"  # the int8 recipe with 7-bit weights (see `int8_recipe`)


def onnx_available() -> bool:
    """ONNX Runtime to run graphs and the ``onnx`` package torch's exporter writes them with."""
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` → ``onnx`` on a CPU where ONNX Runtime is installed, else ``torch``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if str(device).startswith("cpu") and onnx_available() else "torch"
    if runtime == "onnx":
        if not str(device).startswith("cpu"):
            raise ConfigError(f"runtime onnx runs on the CPU; device is {device} (use runtime torch or auto)")
        if not onnx_available():
            raise ConfigError("runtime onnx needs the onnx and onnxruntime packages (pip install onnx onnxruntime)")
    return runtime


def default_export_dir() -> Path:
    """``$XDG_CACHE_HOME/annotator/onnx`` (``~/.cache/annotator/onnx``): exports are derived from
    packaged weights, so they belong in a cache, not with a project's data."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "annotator" / "onnx"


def weights_fingerprint(name_or_path: str) -> str:
    """Sizes and modification times of a local model's files (a file, or a folder two levels
    deep): an export made from other weights under the same path is not reused. A hub id gives ""."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return ""
    files = [path] if path.is_file() else sorted(p for p in [*path.glob("*"), *path.glob("*/*")] if p.is_file())
    stats = "|".join(f"{p.relative_to(path.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha1(stats.encode()).hexdigest()[:12]


def _export_folder(export_dir: Path, key: str, weights: str) -> Path:
    """Where the exports of one network live; the torch version is read from the package metadata,
    so a cached export is used without importing torch."""
    from importlib.metadata import version

    full = f"{key}|weights={weights}|torch={version('torch')}|opset={OPSET}|format={EXPORT_FORMAT}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-60:] + "-" + hashlib.sha1(full.encode()).hexdigest()[:12]
    return Path(export_dir) / slug


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export(build_module: Callable[[], torch.nn.Module], example: dict[str, np.ndarray],
            dynamic_axes: dict[str, dict[int, str]], path: Path, outputs: dict[str, dict[int, str]] | None = None) -> None:
    import warnings

    import torch

    outputs = outputs or VECTORS
    module = build_module().eval()
    inputs = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, inputs, str(path), input_names=list(example), output_names=list(outputs),
                          dynamic_axes={**dynamic_axes, **outputs}, opset_version=OPSET, dynamo=False)


@functools.cache
def cpu_sums_int8_products_exactly() -> bool:
    """Whether this CPU's int8 dot products cannot saturate. ONNX Runtime multiplies unsigned 8-bit
    activations by signed 8-bit weights; on x86 without VNNI it does so with ``vpmaddubsw``, whose
    16-bit sum of two products overflows for full-range weights (measured: EfficientNet-Lite0's
    int8 vectors fell to 0.92 cosine on such a CPU, 0.99 with VNNI). Other architectures and x86
    with VNNI (``avx512_vnni``, ``avx_vnni``) accumulate in 32 bits."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: assume the worst, 7-bit weights are safe everywhere
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def int8_recipe(*, static: bool) -> str:
    """How a network is quantised, which decides its vectors: part of the export's file name and of
    the encoder's name. Dynamic quantisation (transformers) always uses per-channel 7-bit weights:
    as fast as 8-bit, and closer to fp32 (MiniLM: 0.988 mean cosine against 0.945 for per-tensor
    8-bit). Static quantisation (convolutions) keeps 8-bit weights where the CPU sums products
    without saturating (`cpu_sums_int8_products_exactly`; 0.991 on EfficientNet-Lite0), and uses
    7-bit weights elsewhere (0.962, where 8-bit saturates to 0.92)."""
    return "int8" if static and cpu_sums_int8_products_exactly() else f"int8-{SEVEN_BIT}"


def int8_name_suffix(*, static: bool) -> str:
    """What an int8 encoder appends to its name: its vectors are the recipe's, not fp32's."""
    return f"onnx-{int8_recipe(static=static)}"


def _quantize(src: Path, dst: Path, calibration: Sequence[dict[str, np.ndarray]] | None, recipe: str) -> None:
    """int8 weights and activations, as ``recipe`` (`int8_recipe`) says. With ``calibration``
    inputs: static QDQ quantisation, per channel (convolutional networks: dynamic quantisation
    leaves their convolutions slow and inexact — measured 0.6 cosine and 15× slower on
    EfficientNet-Lite0); without: dynamic quantisation of the matrix products (transformers; no
    data needed). Accuracy costs are measured in ``bench_encode``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._inputs = iter(calibration)

        def get_next(self):
            return next(self._inputs, None)

    seven_bit = recipe.endswith(SEVEN_BIT)
    prepared = dst.with_suffix(".pre.onnx")
    try:
        # shape inference and graph folding first; symbolic shapes (for dynamic sequence lengths)
        # are beyond ONNX Runtime's inference for transformers, and only static quantisation needs them
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=calibration is None)
        if calibration is None:
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=seven_bit)
            return
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=seven_bit)
    finally:
        prepared.unlink(missing_ok=True)


class OnnxForward:
    """One ONNX Runtime session: ``forward(**arrays) → (n, d) float32``, or a tuple of arrays for a
    graph with several outputs (vectors, then part-level features).

    Parameters
    ----------
    path : Path
        The ``.onnx`` file.
    threads : int, optional
        Intra-op threads; default: ``OMP_NUM_THREADS`` where set (as torch and CTranslate2 read it;
        a Ray actor pool sets it per actor, so actors sharing a node do not oversubscribe its
        cores), else ONNX Runtime's (one per physical core).
    """

    def __init__(self, path: Path, *, threads: int = 0):
        import onnxruntime as ort

        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    def __call__(self, **arrays: np.ndarray) -> np.ndarray:
        feeds = {name: arrays[name] for name in self.input_names}
        outputs = [np.asarray(out, dtype=np.float32) for out in self._session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def torch_forward(module: torch.nn.Module, input_names: Sequence[str], device: str) -> Callable[..., np.ndarray]:
    """``forward(**arrays) → (n, d) float32`` of a torch module (inputs in ``input_names`` order);
    a module returning a tuple gives a tuple of arrays."""
    import torch

    module = module.to(device)

    def forward(**arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(arrays[name]).to(device) for name in input_names))
        if isinstance(out, tuple):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()

    return forward


def network_forward(runtime: str, key: str, build_module: Callable[[], torch.nn.Module],
                    example: dict[str, np.ndarray], *, device: str = "cpu", dynamic_axes: dict[str, dict[int, str]],
                    export_dir: Path | None = None, int8: bool = False, weights_path: str | None = None,
                    calibration: Callable[[], Sequence[dict[str, np.ndarray]]] | None = None,
                    outputs: dict[str, dict[int, str]] | None = None) -> Callable[..., np.ndarray]:
    """``forward(**arrays) → (n, d) float32`` of the network ``build_module()`` returns: on torch
    (``runtime="torch"``, on ``device``) or on ONNX Runtime (`onnx_forward`, which takes the rest)."""
    if runtime == "onnx":
        return onnx_forward(key, build_module, example, dynamic_axes=dynamic_axes, export_dir=export_dir,
                            int8=int8, weights=weights_fingerprint(weights_path) if weights_path else "",
                            calibration=calibration, outputs=outputs)
    return torch_forward(build_module(), list(example), device)


def onnx_forward(key: str, build_module: Callable[[], torch.nn.Module], example: dict[str, np.ndarray],
                 *, dynamic_axes: dict[str, dict[int, str]], export_dir: Path | None = None,
                 int8: bool = False, weights: str = "",
                 calibration: Callable[[], Sequence[dict[str, np.ndarray]]] | None = None,
                 outputs: dict[str, dict[int, str]] | None = None) -> OnnxForward:
    """The `OnnxForward` of the network ``build_module()`` returns, exported on first use.

    Parameters
    ----------
    key : str
        What identifies the network (the encoder's name).
    weights : str
        A fingerprint of its weights (`weights_fingerprint`); an export of changed weights is not reused.
    build_module : callable
        Returns the torch module whose ``forward(*example.values())`` gives the vectors; called
        only when no export is cached.
    example : dict of str → ndarray
        Named example inputs, in ``forward``'s argument order (they name the graph's inputs).
    dynamic_axes : dict
        Per input, the axes that vary (batch, sequence).
    int8 : bool
        Run the int8-quantised graph instead of the fp32 one.
    calibration : callable, optional
        Returns example inputs (one dict per forward pass) for static quantisation; without it
        int8 is dynamic (see `_quantize`).
    outputs : dict, optional
        The graph's output names and their varying axes; default `VECTORS`, the one output.
    """
    from filelock import FileLock

    folder = _export_folder(export_dir or default_export_dir(), key, weights)
    fp32 = folder / "model.onnx"
    recipe = int8_recipe(static=calibration is not None) if int8 else None
    target = folder / f"model.{recipe}.onnx" if int8 else fp32
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock", preserve_lock_file=True):
        for attempt in (0, 1):
            if not fp32.exists():
                log.info("exporting %s to ONNX (once) at %s", key, fp32)
                _write_atomically(fp32, lambda tmp: _export(build_module, example, dynamic_axes, tmp, outputs))
            if int8 and not target.exists():
                _write_atomically(target, lambda tmp: _quantize(fp32, tmp, calibration and calibration(), recipe))
            try:
                return OnnxForward(target)
            except Exception as exc:  # a damaged file in the cache: export again, once
                if attempt:
                    raise ConfigError(f"ONNX export of {key} at {target} does not load: {exc}") from exc
                log.warning("ONNX export %s does not load (%s); exporting it again", target, exc)
                for stale in {fp32, target}:
                    stale.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar lengths (longest first), so little compute goes to padding."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
