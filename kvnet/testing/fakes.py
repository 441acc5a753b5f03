"""Stand-ins the tests put where a socket or a node's part would be: a transport that records
what a peer connection writes, and a door that counts the commands it took."""


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
