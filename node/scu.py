"""The SCU lives in node/pull/scu.py; this name stays for the design card and old imports."""

from node.pull.scu import *  # noqa: F403
