"""The provider node. Importing it first loads the fastest BLAS it finds (Linux), before MLX binds one."""

from darkbloom.node.blas import preload_blas

preload_blas()
