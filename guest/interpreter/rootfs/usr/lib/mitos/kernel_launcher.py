# Starts an IPython kernel without the debugger: ipykernel imports debugpy
# at start when it can (1.5 s of imports under TCG, warnings in the log), and
# nothing attaches a debugger to a sandbox's kernel.
import sys

sys.modules["debugpy"] = None  # makes `import debugpy` fail: ipykernel then runs without it

from ipykernel import kernelapp  # noqa: E402

kernelapp.launch_new_instance()
