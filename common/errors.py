"""The one exception type for problems a user can fix."""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input (data, flags, files) that a message can explain.

    The command lines print ``str(error)`` as one line and exit with status 2, without a
    traceback. The message names the culprit (file, flag, video) and the fix.
    """
