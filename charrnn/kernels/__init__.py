"""Where and how the arithmetic runs: CPU matmuls (BLAS or oneDNN per shape), bfloat16
operands, a fast tanh, glibc's allocator, PyTorch's fused CUDA steps, CUDA graphs, the
device and threads."""
