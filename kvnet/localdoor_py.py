"""Pure-Python twin of kvnet/localdoor.pyx (RINGKV_NO_EXTENSIONS=1): no door.

The compiled door only speeds up commands the front door's general path answers the same way,
so without it the general path runs every command.
"""

LocalDoor = LaneReplica = None
