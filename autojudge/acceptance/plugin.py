"""The judge-accept kernel of the TensorRT plugin, compiled and called from Python.

``plugins/judgeAcceptPlugin`` holds the rule once (``judgeAcceptRule.h``); this module builds

- the **host** library (g++): the kernel's per-sequence logic with a one-thread team, which
  the tests compare with the oracle (:mod:`autojudge.acceptance`) on any machine;
- the **CUDA** library (nvcc): the kernel itself, launched on a torch CUDA stream
  (``benchmarks/bench_plugin_kernel.py`` on a GPU host),

and calls either through ctypes. Libraries are cached under the autojudge cache, keyed by
the sources' hash and the compiler flags, and appear by atomic rename.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from autojudge.errors import AutoJudgeError, MissingDependencyError
from autojudge.storage import asset, atomic_directory, cache_root

PLUGIN_NAME = "judgeAcceptPlugin"
NOT_EVALUATED = -1.0  # probability at positions the kernel did not evaluate
HIDDEN_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DEFAULT_CUDA_ARCHS = ("80", "90")


class JudgeAcceptArgs(ctypes.Structure):
    """Mirror of ``autojudge::JudgeAcceptArgs`` in judgeAcceptRule.h (same order, same types)."""

    _fields_ = [
        ("draftTokens", ctypes.c_void_p), ("targetTokens", ctypes.c_void_p),
        ("draftHidden", ctypes.c_void_p), ("targetHidden", ctypes.c_void_p), ("scalarFeatures", ctypes.c_void_p),
        ("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("threshold", ctypes.c_void_p),
        ("numAccepted", ctypes.c_void_p), ("nextTokens", ctypes.c_void_p), ("probabilities", ctypes.c_void_p),
        ("batch", ctypes.c_int32), ("window", ctypes.c_int32),
        ("draftHiddenSize", ctypes.c_int32), ("targetHiddenSize", ctypes.c_int32),
        ("scalarFeatureSize", ctypes.c_int32), ("hiddenType", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class KernelResult:
    num_accepted: torch.Tensor  # [B] int32, n in 0..W
    next_tokens: torch.Tensor  # [B] int32, t_n
    probabilities: torch.Tensor  # [B, W] fp32, NOT_EVALUATED where the judge was not run


def _sources() -> list[Path]:
    folder = asset("plugin")
    return sorted([*folder.glob("judgeAccept*.h"), folder / "judgeAcceptHost.cpp", folder / "judgeAcceptKernel.cu"])


def _compile(kind: str, command: list[str], output_name: str) -> Path:
    """Run ``command`` (which writes ``{out}``) once per sources/flags; return the cached file."""
    key = hashlib.sha256(" ".join(command).encode())
    for source in _sources():
        key.update(source.name.encode() + source.read_bytes())
    final = cache_root() / "plugin" / f"{kind}-{key.hexdigest()[:16]}"
    if not (final / output_name).is_file():
        with atomic_directory(final) as tmp:
            argv = [part.replace("{out}", str(tmp / output_name)) for part in command]
            done = subprocess.run(argv, check=False, cwd=asset("plugin"), capture_output=True, text=True)
            if done.returncode != 0:
                raise AutoJudgeError(f"compiling the {kind} judge-accept library failed:\n"
                                     f"$ {' '.join(argv)}\n{done.stderr.strip()}")
    return final / output_name


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/local/cuda/bin/{name}" if name == "nvcc" else None)
    if path is None or not Path(path).exists():
        raise MissingDependencyError(f"`{name}` was not found on PATH: {hint}")
    return path


def build_host_library() -> Path:
    """g++ build of the rule for the host (no CUDA needed): a one-thread team, and a threaded one."""
    cxx = _tool("g++", "install a C++17 compiler (e.g. `apt-get install g++`).")
    return _compile("host", [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread",
                             "judgeAcceptHost.cpp", "-o", "{out}"], "libjudgeAcceptHost.so")


def build_cuda_library(archs: tuple[str, ...] = DEFAULT_CUDA_ARCHS, defines: tuple[str, ...] = ()) -> Path:
    """nvcc build of the kernel as a shared library with a C launch entry point
    (``defines``: e.g. ``AUTOJUDGE_JUDGE_ACCEPT_THREADS=512`` to tune a variant)."""
    nvcc = _tool("nvcc", "install the CUDA toolkit (12.x or 13.x) or put its bin/ on PATH.")
    # Cubins for each arch, and PTX of the newest so later GPUs (sm_100, ...) JIT it instead of failing to launch.
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs] + [
        f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return _compile("cuda", [nvcc, "-std=c++17", "-O3", *gencode, *(f"-D{d}" for d in defines),
                             "-Xcompiler", "-fPIC", "-shared",
                             "judgeAcceptKernel.cu", "-o", "{out}"], "libjudgeAcceptKernel.so")


@cache
def _library(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)


class KernelCall:
    """One prepared launch: inputs converted once, outputs allocated; ``run()`` may repeat."""

    def __init__(
        self,
        draft_tokens: torch.Tensor,  # [B, W] integer
        target_tokens: torch.Tensor,  # [B, W+1] integer
        draft_hidden: torch.Tensor | None,  # [B, W, Hd] fp32/fp16/bf16; None for the target-only layout
        target_hidden: torch.Tensor,  # [B, W, Ht], same dtype as draft_hidden
        weight: torch.Tensor,  # [Hd + Ht + E] (or [Ht + E])
        bias: float,
        threshold: float | torch.Tensor,  # scalar or [B]
        cuda_library: Path | None = None,  # a build_cuda_library() variant [default: the default build]
        scalars: torch.Tensor | None = None,  # [B, W, E] scalar features (fp32); None or [B, W, 0]: E = 0
    ) -> None:
        batch, window = draft_tokens.shape
        device = target_hidden.device
        if tuple(target_tokens.shape) != (batch, window + 1):
            raise ValueError(f"target_tokens must be [B, W+1] = {[batch, window + 1]}, got {list(target_tokens.shape)}")
        if target_hidden.dtype not in HIDDEN_TYPES:
            raise ValueError(f"hidden states must be float32, float16 or bfloat16, not {target_hidden.dtype}")
        if draft_hidden is not None and draft_hidden.dtype != target_hidden.dtype:
            raise ValueError("draft and target hidden states must share one dtype")
        draft_size = 0 if draft_hidden is None else draft_hidden.shape[-1]
        target_size = target_hidden.shape[-1]
        if scalars is not None and (scalars.dim() != 3 or tuple(scalars.shape[:2]) != (batch, window)):
            raise ValueError(f"scalars must be [B, W, E] = {[batch, window, 'E']}, got {list(scalars.shape)}")
        if scalars is not None and not scalars.is_floating_point():
            raise ValueError(f"scalars must be floating point (read as float32), not {scalars.dtype}")
        scalar_size = 0 if scalars is None else scalars.shape[-1]
        if weight.numel() != draft_size + target_size + scalar_size:
            raise ValueError(f"weight has {weight.numel()} entries, expected Hd + Ht + E = "
                             f"{draft_size} + {target_size} + {scalar_size}")

        def prepared(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
            return t.to(device=device, dtype=dtype or t.dtype).contiguous()

        self.device = device
        self.inputs = {  # kept alive as long as this call
            "draftTokens": prepared(draft_tokens, torch.int32),
            "targetTokens": prepared(target_tokens, torch.int32),
            "draftHidden": None if draft_hidden is None else prepared(draft_hidden),
            "targetHidden": prepared(target_hidden),
            "scalarFeatures": None if not scalar_size else prepared(scalars, torch.float32),
            "weight": prepared(weight, torch.float32),
            # Scalars by fill kernels, not host-to-device copies, so a call can be made inside CUDA-graph capture.
            "bias": torch.full((1,), float(bias), dtype=torch.float32, device=device),
            "threshold": (torch.full((batch,), float(threshold), dtype=torch.float32, device=device)
                          if isinstance(threshold, (int, float))
                          else prepared(torch.as_tensor(threshold, dtype=torch.float32).expand(batch))),
        }
        self.result = KernelResult(
            num_accepted=torch.empty(batch, dtype=torch.int32, device=device),
            next_tokens=torch.empty(batch, dtype=torch.int32, device=device),
            probabilities=torch.empty(batch, window, dtype=torch.float32, device=device),
        )
        self.args = JudgeAcceptArgs(
            **{name: (0 if t is None else t.data_ptr()) for name, t in self.inputs.items()},
            numAccepted=self.result.num_accepted.data_ptr(), nextTokens=self.result.next_tokens.data_ptr(),
            probabilities=self.result.probabilities.data_ptr(),
            batch=batch, window=window, draftHiddenSize=draft_size, targetHiddenSize=target_size,
            scalarFeatureSize=scalar_size, hiddenType=HIDDEN_TYPES[target_hidden.dtype],
        )
        if device.type == "cpu":
            library = _library(str(build_host_library()))
            self._host, self._host_team = library.autojudgeJudgeAcceptHost, library.autojudgeJudgeAcceptHostTeam
            self._host.restype = self._host_team.restype = ctypes.c_char_p
        else:
            self._launch = _library(str(cuda_library or build_cuda_library())).autojudgeJudgeAcceptLaunch

    def run(self, threads: int = 0, blocks: int = 0) -> KernelResult:
        """The host build for CPU tensors; a kernel launch on the current stream for CUDA tensors
        (``threads`` per block: a multiple of 32 up to 1024, 0 for the kernel's default; ``blocks``
        per sequence: 1 = one block, 2..8 = a thread-block cluster on sm_90+, 0 = the launcher's
        choice, a cluster while the batch leaves SMs idle). The host build ignores both."""
        if self.device.type == "cpu":
            error = self._host(ctypes.byref(self.args))
            if error:
                raise ValueError(f"judge-accept kernel: {error.decode()}")
        else:
            stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
            status = self._launch(ctypes.byref(self.args), stream, ctypes.c_int32(threads), ctypes.c_int32(blocks))
            if status != 0:
                raise RuntimeError(f"judge-accept kernel launch failed with cudaError {status}")
        return self.result

    def run_host_team(self, groups: int, lanes: int) -> KernelResult:
        """The host build with ``groups`` x ``lanes`` threads per sequence (CPU tensors): the GPU's
        cooperative code (positions shared by several groups, partial sums reduced, the walk) on a CPU."""
        if self.device.type != "cpu":
            raise ValueError("run_host_team runs the host build: CPU tensors only")
        error = self._host_team(ctypes.byref(self.args), ctypes.c_int32(groups), ctypes.c_int32(lanes))
        if error:
            raise ValueError(f"judge-accept kernel: {error.decode()}")
        return self.result


def judge_accept_native(*args, **kwargs) -> KernelResult:
    """Prepare and run once (arguments as :class:`KernelCall`)."""
    return KernelCall(*args, **kwargs).run()
