"""Named crash points for tests: the process SIGKILLs itself at the named step when DICOMNODE_FAILPOINT names it.

Each step that spans the database and the file system is preceded by its half: a kill there leaves exactly
the state a power cut would, and start-up recovery must repair it (tests/e2e/test_kill_at_each_step.py).
Unset (always, in production) a hit is one string comparison.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "DICOMNODE_FAILPOINT"
_armed = os.environ.get(ENV) or None

# The steps, in the order a request and its study go through them.
REQUEST_FILE_ACTIVATED = "request-file-activated"  # file in active/, row still says inbox/
STUDY_COMPLETE_COMMITTED = "study-complete-committed"  # studies.state complete, no ready marker yet
STUDY_PUBLISHED = "study-published"  # outputs published, studies.state still processing
REQUEST_STATE_FINAL = "request-state-final"  # requests.state done, file still in active/
REQUEST_FILE_FINISHED = "request-file-finished"  # file in done/, row still says active/
REQUEST_ROW_FINISHED = "request-row-finished"  # row says done/, final status not written
STEPS = (REQUEST_FILE_ACTIVATED, STUDY_COMPLETE_COMMITTED, STUDY_PUBLISHED, REQUEST_STATE_FINAL,
         REQUEST_FILE_FINISHED, REQUEST_ROW_FINISHED)


def hit(name: str) -> None:
    if _armed is not None and _armed == name:
        log.warning("Failpoint %s: killing the node (%s is set)", name, ENV)
        os.kill(os.getpid(), signal.SIGKILL)
