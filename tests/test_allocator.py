"""charrnn/kernels/allocator.py: glibc's malloc tuned once, harmlessly."""

import os
import subprocess
import sys


def test_tune_allocator_is_idempotent_and_harmless():
    """In a child process, since it changes malloc settings process-wide."""
    code = (
        "import platform, sys, torch\n"
        "from charrnn.kernels.allocator import tune_allocator\n"
        "from charrnn.cells.lstm import lstm_scan\n"
        "first = tune_allocator()\n"
        "assert isinstance(first, bool) and tune_allocator() is first\n"
        "assert first == (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc')\n"
        "xp = torch.randn(64, 32, 4 * 256, requires_grad=True)\n"  # 8 MiB buffers
        "W = (torch.randn(256, 4 * 256) / 16).requires_grad_()\n"
        "for _ in range(2):\n"
        "    out, hT, cT = lstm_scan(xp, torch.zeros(32, 256), torch.zeros(32, 256), W)\n"
        "    torch.autograd.grad(out.sum() + cT.sum(), [xp, W])\n"
        "print('ok', first)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
