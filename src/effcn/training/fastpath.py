"""The fast path's switches: mixed precision, channels_last, torch.compile, one training step.

Used by the trainer and by ``effcn bench`` so that both time the same code. Each switch is a
``train.*`` config field (see config.py); BENCHMARKS.md has what each one measurably buys.

- ``train.amp``: ``auto`` is bf16 autocast on CUDA and on CPUs that compute bf16 natively
  (AVX512-BF16 or AMX: there oneDNN's bf16 convolutions make a training step 1.4-1.7x faster,
  BENCHMARKS.md), fp32 on other CPUs (bf16 is emulated there and slower); ``bf16`` forces it on
  any device; ``off`` is fp32 everywhere (use it for bit-for-bit comparisons across machines).
  bf16 has fp32's range, so no gradient scaler is needed (fp16 is not offered for that reason).
  Losses are always computed in fp32 from fp32 copies of the outputs, and the capsule math
  (squash, routing) stays fp32 (capsules.fp32).
- ``train.channels_last``: NHWC weights and inputs (cuDNN/oneDNN's preferred layout on GPU).
- ``train.compile``: ``torch.compile`` of the forward; ``train.compile_mode`` is passed through
  (``reduce-overhead`` uses CUDA graphs on CUDA against launch overhead at small batches; on CPU
  it behaves as ``default``). A compile that fails falls back to eager with a warning.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..errors import ConfigError

AMP_CHOICES = ("auto", "bf16", "off")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), as torch reports them."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, probe, None)  # private helpers; absent in old torch
        try:
            if supported is not None and supported():
                return True
        except Exception:  # noqa: BLE001 - a failing probe means: assume no bf16
            pass
    return False


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``, or None for fp32."""
    if setting not in AMP_CHOICES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_CHOICES)}, got {setting!r}.")
    if setting == "off":
        return None
    if setting == "auto" and device.type != "cuda" and not (device.type == "cpu"
                                                            and cpu_has_native_bf16()):
        return None
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """How a forward ran, as recorded in summaries and reports: 'bf16 autocast' or 'fp32'."""
    return "fp32" if dtype is None else "bf16 autocast"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (a no-op context for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    # A CUDA graph must not keep autocast's cached weight copies (they are made per call).
    return torch.autocast(device_type=device.type, dtype=dtype,
                          cache_enabled=not (device.type == "cuda" and capturing()))


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_model(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """Convert the weights' layout in place (a no-op for contiguous_format)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model, enabled: bool, mode: str = "default"):
    """``torch.compile(model, mode=...)`` when enabled, else the model itself.

    Compilation happens lazily at the first call; a backend that cannot compile on this machine
    (no C++ compiler, an unsupported op) falls back to eager there instead of failing the run.
    """
    if not enabled:
        return model
    if mode == "reduce-overhead" and not torch.cuda.is_available():
        mode = "default"  # CUDA graphs need CUDA
    from torch import _dynamo  # (not "import torch._dynamo": that makes torch a local name here)
    _dynamo.config.suppress_errors = True
    try:
        return torch.compile(model, mode=None if mode == "default" else mode)
    except Exception as e:  # noqa: BLE001 - any backend failure means: run eagerly
        warnings.warn(f"torch.compile is not available here ({e}); training eagerly.")
        return model


def forward(model, x: torch.Tensor, y: torch.Tensor | None = None,
            dtype: torch.dtype | None = None):
    """``model(x, y)`` under autocast(dtype), with fp32 lengths and reconstruction so that the
    losses are computed in fp32. x (B, C, H, W) float in [0, 1]; y (B,) labels or None."""
    with autocast(x.device, dtype):
        out = model(x, y)
    if dtype is None:
        return out
    recon = out.reconstruction
    return out._replace(lengths=out.lengths.float(),
                        reconstruction=None if recon is None else recon.float())
