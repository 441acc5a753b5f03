"""Stand-ins the tests put where a socket or a node's part would be: a transport that records
what a peer connection writes, a door that counts the commands it took, and a door whose SETs
stay in flight as the direct lane's do."""


class PeerTransport:
    """What a PeerConnection uses of its transport, recording: `out` holds every byte written,
    `closing` turns true at close() or abort(), `paused` while reading is paused."""

    def __init__(self):
        self.out, self.closing, self.paused = b"", False, False

    def write(self, data):
        self.out += bytes(data)

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


class CountingDoor:
    """A node's compiled door (kvnet/localdoor.pyx) wrapped to count what it took: `taken`
    counts every command it answered or started, `beside` those `one()` took beside others of
    their connection still in flight."""

    def __init__(self, door):
        self.door, self.taken, self.beside = door, 0, 0

    def take(self, session, queue, out, budget):
        before = len(queue)
        added, started = self.door.take(session, queue, out, budget)
        self.taken += before - len(queue)
        return added, started

    def receive(self, session, data, out, budget, limits):
        before = len(out)
        pos, added = self.door.receive(session, data, out, budget, limits)
        self.taken += len(out) - before
        return pos, added

    def one(self, session, argv):
        reply = self.door.one(session, argv)
        self.taken += reply is not None
        self.beside += reply is not None
        return reply


class LaneDoor:
    """A node's compiled door (kvnet/localdoor.pyx) as the front door uses it, without a node:
    in front of a backend whose set_overwrite_now answers with a future, take() and one() start
    each plain SET through `commands.dispatch` and hand over its future, as the door hands over
    a command on the direct lane; anything else they leave to the general path, and receive()
    takes nothing. `started` counts the SETs it started."""

    def __init__(self, commands):
        self.commands, self.started = commands, 0

    def _set(self, session, argv):
        if len(argv) != 3 or type(argv[0]) is not bytes or argv[0].upper() != b"SET":
            return None
        fut = self.commands.dispatch(session, argv)
        if not hasattr(fut, "add_done_callback"):
            raise AssertionError(f"LaneDoor needs a backend answering SET with a future, not "
                                 f"{fut!r}")
        self.started += 1
        return fut

    def take(self, session, queue, out, budget):
        argv = queue[0] if queue and type(queue[0]) is list else None
        fut = None if argv is None else self._set(session, argv)
        if fut is None:
            return 0, None
        queue.popleft()
        return 0, (fut, argv[1])

    def one(self, session, argv):
        return self._set(session, argv)

    def receive(self, session, data, out, budget, limits):
        return 0, 0
