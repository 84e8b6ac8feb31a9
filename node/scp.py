"""The Storage SCP lives in node/receive/scp.py; this name stays for the design card and old imports."""

from node.receive.scp import *  # noqa: F403
