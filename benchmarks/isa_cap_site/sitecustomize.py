"""Put on vLLM's PYTHONPATH by benchmarks/vs_vllm_cpu.py when NEO_CPU_ISA=avx2.

vLLM's CPU platform picks its kernel library (_C_AVX2, _C_AVX512 or _C) by torch.cpu's CPUID
checks, which no environment variable caps (ATen, oneDNN, MKL and inductor follow theirs):
here they answer as an AVX2-only CPU's would. Python runs this file at the start of every
process on that PYTHONPATH, vLLM's engine-core process included.
"""

import os

if os.environ.get("NEO_CPU_ISA", "").strip().lower() == "avx2":
    import torch.cpu

    def _absent() -> bool:
        return False

    for _name in dir(torch.cpu):
        if _name.startswith(("_is_avx512", "_is_amx", "_is_vnni")):  # AVX512-VNNI
            setattr(torch.cpu, _name, _absent)
