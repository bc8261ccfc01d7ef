"""Byte and rate units, so that figures in the code read like their datasheets."""

from neo_sim.errors import NeoError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1e9  # datasheets quote decimal gigabytes for bandwidth and sometimes memory
TB = 1e12
TFLOPS = 1e12

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a floating-point dtype name such as 'float16' or 'bf16'."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise NeoError(f"unknown dtype {dtype!r}: use one of float32, float16, bfloat16") from None


def canonical_dtype(dtype: str) -> str:
    """'fp16' -> 'float16' etc.; raises NeoError for unknown names."""
    dtype_bytes(dtype)
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
