"""What this machine is: chip, memory, cores, OS (for registration and doctor)."""

from __future__ import annotations

import os
import platform

from darkbloom.protocol import Hardware


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def chip_name() -> str:
    if platform.system() == "Darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=2)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_hardware() -> Hardware:
    return Hardware(
        chip=chip_name(),
        memory_gb=round(physical_memory_bytes() / 2**30, 1),
        cpu_cores=os.cpu_count() or 0,
        os=f"{platform.system()} {platform.release()} {platform.machine()}",
    )
