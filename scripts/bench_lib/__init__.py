"""The parts of scripts/bench.py (the entry point, which says what is measured and how):

    internals.py  the private charrnn functions the bench calls, named in one place
    timing.py     wall clocks, paired rounds, what the machine is (CPU, ISA, load)
    workloads.py  what is timed: GEMM peaks, training steps and their matmuls, sampling, eval
    memory.py     a training step's memory, each configuration in a fresh process
    report.py     each part of a section measured and printed as a Markdown table
    pages.py      the tables written into a docs page between marker comments
"""

# The environment that caps oneDNN, MKL and PyTorch's own kernels at AVX2 when set before torch
# is imported (the bench's AVX2 section; scripts/paired.py --avx2).
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
