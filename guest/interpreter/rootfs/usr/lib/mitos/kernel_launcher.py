# Starts an IPython kernel without the debugger: ipykernel imports debugpy
# at start when it can (1.5 s of imports under TCG, warnings in the log), and
# nothing attaches a debugger to a sandbox's kernel.
#
# Without a parent to poll: jupyter_client passes JPY_PARENT_PID, and ipykernel
# then checks every second whether that process is alive. Under TCG each
# wake-up of an idle sandbox costs host CPU, and a host holds hundreds of idle
# children. Kernels a dead mitos-interpreter left are ended by the next one
# when it starts (serve() in mitos-interpreter).
import os
import sys

os.environ.pop("JPY_PARENT_PID", None)  # read when ipykernel is imported
sys.modules["debugpy"] = None  # makes `import debugpy` fail: ipykernel then runs without it

from ipykernel import kernelapp  # noqa: E402

kernelapp.launch_new_instance()
