"""What a user error prints: its own message, without the wrapping a loader worker adds."""

from __future__ import annotations

import re

# torch re-raises a worker's exception as "Caught X in DataLoader worker process N.\nOriginal
# Traceback ...\nmodule.X: message": the message is the last line, after the class name
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def user_message(err: BaseException) -> str:
    text = str(err)
    if _WORKER.match(text):
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
