# Runs once in every Jupyter kernel mitos-interpreter starts, in a namespace
# of its own (nothing lands in the user's globals).
#
# - Fork safety: reseeds `random` and `numpy.random` on SIGUSR2, so children
#   of one parent never draw the same numbers, and refreshes MITOS_SANDBOX_ID,
#   the kernel's idea of who it is. mitos-interpreter registers the kernel for
#   the agent's fork notice (SIGUSR2 to the pids in /run/mitos/notify) only
#   while it has work; an idle kernel gets the signal from mitos-interpreter
#   itself, before its first cell after a fork or claim.
# - Warm imports: numpy, pandas and matplotlib load here, at template build,
#   so a claimed or forked sandbox's first cell does not pay for them.
# - Plain tracebacks (no ANSI colours) and inline plots.

import os
import random
import signal
import sys

ID_FILE = "/run/mitos/sandbox-id"


def _reseed(*_):
    random.seed()  # from os.urandom, which the agent reseeded first
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    try:
        with open(ID_FILE) as f:
            sid = f.read().strip()
        if sid:
            os.environ["MITOS_SANDBOX_ID"] = sid
    except OSError:
        pass


# kernel_launcher.py kept ipykernel from importing debugpy; let user code import it.
if "debugpy" in sys.modules and sys.modules["debugpy"] is None:
    del sys.modules["debugpy"]

signal.signal(signal.SIGUSR2, _reseed)

try:
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import matplotlib

    matplotlib.use("module://matplotlib_inline.backend_inline")
    import matplotlib.pyplot  # noqa: F401
except ImportError:
    pass

from IPython import get_ipython

_ip = get_ipython()
if "matplotlib" in sys.modules:
    _ip.run_line_magic("matplotlib", "inline")
_ip.run_line_magic("colors", "NoColor")
_reseed()
