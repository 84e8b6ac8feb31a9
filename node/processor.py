"""The processor lives in node/process/processor.py; this name stays for the design card and old imports."""

from node.process.processor import *  # noqa: F403
