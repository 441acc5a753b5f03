"""PeerProtocolCore: the node-to-node protocol state machine, free of asyncio.

States, handshake, mutual HMAC authentication, request ids and dispatch live
here (asyncpg's coreproto split); the only I/O is the abstract ``_write`` and
the ``_on_*`` hooks. docs/peer.md describes the exchange.
"""
import enum
import hashlib
import hmac
import os

import msgpack

from kvnet.errors import KVNetError, PeerError, ProtocolError
from kvnet.peer.errors import AuthenticationError, ConnectionLost, VersionMismatch
from kvnet.peer.framing import (DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MESSAGE_SIZE, MAX_REQ_ID,
                                 FrameMac, FrameMacError, FrameReader, Kind, encode_message,
                                 reassembly, seal)

# newest version this code speaks (2: batch requests; 3: chunked messages; 4: frame MACs)
PROTOCOL_VERSION = 4
MIN_PROTOCOL_VERSION = 1  # oldest version this code still speaks (without frame MACs)
BATCH_VERSION = 2  # the first version whose nodes answer batch requests
CHUNK_VERSION = 3  # the first version whose nodes send and take messages above a frame in CHUNKs
MAC_VERSION = 4  # the first version with per-frame MACs; a node that wants them speaks no older
NONCE_SIZE = 32
# Frames a listening end takes before the dialer has authenticated (HELLO, AUTH, ERROR: a few
# hundred bytes): a stranger cannot make it buffer a 64 MiB frame (docs/security.md).
HANDSHAKE_MAX_FRAME = 16 * 1024
MAX_NODE_ID_LEN = 255
_AUTH_LABEL = b"ringkv-peer-auth"
_MAC_LABEL = b"ringkv-frame-mac"


class State(enum.Enum):
    CONNECTING = "connecting"  # no transport yet
    HELLO = "hello"  # our HELLO sent, waiting for the peer's
    AUTH = "auth"  # HELLOs exchanged, waiting for the peer's proof
    READY = "ready"  # authenticated: requests, responses, notifications
    CLOSED = "closed"


# The states and frame kinds the request path compares, as module constants: an Enum member
# read through its class is a property call (about 160 ns), and these are read for every frame.
READY, CLOSED = State.READY, State.CLOSED
_REQUEST, _RESPONSE, _ERROR, _NOTIFY, _PING, _PONG, _CHUNK = (
    Kind.REQUEST, Kind.RESPONSE, Kind.ERROR, Kind.NOTIFY, Kind.PING, Kind.PONG, Kind.CHUNK)


# ERROR codes sent on req_id 0 when a connection is refused; mapped back on receipt.
_REFUSAL_CODES = {AuthenticationError: "auth", VersionMismatch: "version", FrameMacError: "mac",
                  ProtocolError: "protocol"}
_REFUSAL_ERRORS = {"auth": AuthenticationError, "version": VersionMismatch, "closing": ConnectionLost,
                   "mac": AuthenticationError}     # (the end that found it counts it: pool.py)


def auth_proof(secret, version, prover, verifier, prover_nonce, verifier_nonce, mac=None):
    """HMAC-SHA256 with the cluster secret over both node ids and both nonces.

    The fields are msgpack-encoded (length-prefixed, so unambiguous) in the
    prover's order; each side's proof therefore differs and cannot be reflected.
    From version 4 (``mac`` not None) it covers whether the frames after it carry MACs, so a
    HELLO altered to drop them fails authentication.
    """
    fields = [_AUTH_LABEL, version, prover, verifier, prover_nonce, verifier_nonce]
    if mac is not None:
        fields.append(bool(mac))
    return hmac.new(secret, msgpack.packb(fields, use_bin_type=True), hashlib.sha256).digest()


def session_key(secret, version, sender, receiver, sender_nonce, receiver_nonce):
    """The key of one direction's frame MACs (sender to receiver) of one connection: HMAC-SHA256
    with the cluster secret over both node ids and both nonces of its handshake, in the
    sender's order (so the two directions' keys differ, and every connection's are new)."""
    msg = msgpack.packb([_MAC_LABEL, version, sender, receiver, sender_nonce, receiver_nonce],
                        use_bin_type=True)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _refusal_code(exc):
    for cls, code in _REFUSAL_CODES.items():
        if isinstance(exc, cls):
            return code
    return "refused"


class PeerProtocolCore:
    """One end of a peer connection. The dialing end is the ``initiator``.

    Driver calls: ``start_handshake()`` once connected, ``feed_data(bytes)``,
    ``connection_closed(exc)``; then ``send_request`` / ``send_response`` /
    ``send_error`` / ``send_notify`` / ``send_ping`` once READY, and ``close``.
    """

    def __init__(
        self,
        node_id,
        secret,
        *,
        initiator,
        expected_peer=None,
        max_frame_size=DEFAULT_MAX_FRAME_SIZE,
        versions=(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        frame_mac=True,
    ):
        if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NODE_ID_LEN:
            raise ValueError(f"node id must be a string of 1..{MAX_NODE_ID_LEN} characters")
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, (bytes, bytearray)) or not secret:
            raise ValueError("the cluster secret must be a non-empty str or bytes")
        if type(max_message_size) is not int or not max_frame_size <= max_message_size < 1 << 32:
            raise ValueError("max_message_size must be an integer from max_frame_size to 2**32-1")
        lo, hi = versions
        if not 0 < lo <= hi:
            raise ValueError(f"bad protocol version range {versions!r}")
        # frame_mac: this end wants a MAC on every frame after the handshake (not inside mutual
        # TLS: the pool and server pass False there), so it speaks no version without them (a
        # range below MAC_VERSION, as tests give to play an older node, has none to want)
        self.frame_mac = bool(frame_mac) and hi >= MAC_VERSION
        if self.frame_mac:
            lo = max(lo, MAC_VERSION)
        self.mac = False  # the frames after the handshake carry MACs (agreed in it)
        self._send_mac = None  # our direction's FrameMac once READY with MACs
        self.node_id = node_id
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self._chunk_limit = 0  # messages up to this size may go in chunks (0: none; version 3)
        self._partial = None  # the chunked message being received (framing.Reassembly)
        self.state = State.CONNECTING
        self.peer_id = None
        self.version = None  # agreed protocol version
        self.close_exc = None  # why the connection closed (None: closed cleanly by us)
        self.late_responses = 0  # answers to requests already forgotten (timed out)
        self._secret = bytes(secret)
        self._versions = (lo, hi)
        self._nonce = os.urandom(NONCE_SIZE)
        self._peer_nonce = None
        # the listening end reads the dialer's frames within HANDSHAKE_MAX_FRAME until READY
        # (the dialer sends nothing more before the listener's AUTH, which comes after READY)
        # (one frame at a time until READY: the frames after the handshake may carry MACs)
        self._reader = FrameReader(max_frame_size if initiator
                                   else min(max_frame_size, HANDSHAKE_MAX_FRAME), hold=True)
        self._pending = set()  # our request ids awaiting an answer
        self._next_id = 0
        self._dispatch = {
            State.CONNECTING: self._process__connecting,
            State.HELLO: self._process__hello,
            State.AUTH: self._process__auth,
            READY: self._process__ready,
            CLOSED: self._process__closed,
        }

    # -- hooks for the driver -------------------------------------------------

    def _write(self, data):
        raise NotImplementedError

    def _on_ready(self):
        pass

    def _on_request(self, type, req_id, payload):
        pass

    def _on_response(self, req_id, payload):
        pass

    def _on_error_response(self, req_id, code, message):
        pass

    def _on_notify(self, type, payload):
        pass

    def _on_close(self, exc):
        pass

    # -- driver entry points --------------------------------------------------

    def start_handshake(self):
        if self.state is not State.CONNECTING:
            raise PeerError(f"handshake already started (state {self.state.value})")
        self.state = State.HELLO
        lo, hi = self._versions
        hello = {"versions": [lo, hi], "node": self.node_id, "nonce": self._nonce}
        if hi >= MAC_VERSION:
            hello["mac"] = self.frame_mac
        self._send(Kind.HELLO, 0, None, hello)

    def feed_data(self, data):
        if self.state is CLOSED:
            return
        try:
            held = self._reader.hold
            frames = self._reader.feed(data)
            for frame in frames:
                state = self.state
                if state is READY:      # (an enum as a dict key hashes in Python)
                    self._process__ready(frame)
                else:
                    self._dispatch[state](frame)
                if self.state is CLOSED:
                    break
            if held and frames and self.state is not CLOSED and self._reader.buffered:
                self.feed_data(b"")    # the handshake's next frame (read with what it set up)
        except KVNetError as exc:
            self._fail(exc)

    def connection_closed(self, exc=None):
        if self.state is CLOSED:
            return
        peer = self.peer_id or "peer"
        if self.state is not READY:
            msg = f"connection to {peer} closed during the handshake (state {self.state.value})"
        else:
            msg = f"connection to {peer} lost"
        if exc is not None:
            msg += f": {exc}"
        self.close(ConnectionLost(msg))

    def close(self, exc=None):
        """Enter CLOSED (once) and tell the driver through ``_on_close(exc)``."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.close_exc = exc
        self._pending.clear()
        self._on_close(exc)

    # -- sending --------------------------------------------------------------

    def _send(self, kind, req_id, type_, payload):
        data = encode_message((kind, req_id, type_, payload), self.max_frame_size,
                              self._chunk_limit)
        if self._send_mac is not None:
            data = seal(self._send_mac, data)
        if type(data) is bytes:
            self._write(data)
        else:
            self._write_parts(data)

    def _write_parts(self, parts):
        """The buffers of one chunked message, written in order with nothing between them."""
        for part in parts:
            self._write(part)

    def _check_ready(self):
        if self.state is not READY:
            if self.state is CLOSED:
                raise ConnectionLost(f"connection to {self.peer_id or 'peer'} is closed") from self.close_exc
            raise PeerError(f"connection to {self.peer_id or 'peer'} is not ready (state {self.state.value})")

    def _new_req_id(self):
        while True:
            self._next_id = self._next_id % MAX_REQ_ID + 1  # 1..2**32-1, wrapping
            if self._next_id not in self._pending:
                return self._next_id

    def send_request(self, type, payload=None):
        """Send a request; returns its id. Its answer comes to ``_on_response`` or ``_on_error_response``."""
        self._check_ready()
        if not isinstance(type, str):
            raise TypeError("request type must be a str")
        req_id = self._new_req_id()
        self._send(_REQUEST, req_id, type, payload)
        self._pending.add(req_id)
        return req_id

    def send_ping(self):
        """Send a PING; its PONG comes to ``_on_response(req_id, None)``."""
        self._check_ready()
        req_id = self._new_req_id()
        self._send(_PING, req_id, None, None)
        self._pending.add(req_id)
        return req_id

    def forget(self, req_id):
        """Stop waiting for ``req_id`` (it timed out): a late answer is counted and dropped."""
        self._pending.discard(req_id)

    @property
    def pending(self):
        return len(self._pending)

    def send_response(self, req_id, payload):
        self._check_ready()
        self._send(_RESPONSE, req_id, None, payload)

    def send_error(self, req_id, code, message):
        self._check_ready()
        self._send(_ERROR, req_id, str(code), str(message))

    def send_notify(self, type, payload=None):
        self._check_ready()
        if not isinstance(type, str):
            raise TypeError("notification type must be a str")
        self._send(_NOTIFY, 0, type, payload)

    # -- failure --------------------------------------------------------------

    def _fail(self, exc):
        """Tell the peer why (best effort, on req_id 0), then close."""
        if self.state is not State.CONNECTING and self.state is not CLOSED:
            try:
                self._send(_ERROR, 0, _refusal_code(exc), str(exc))
            except Exception:
                pass
        self.close(exc)

    def _refused(self, frame):
        """The peer sent ERROR on req_id 0: it refuses or drops the connection."""
        code, message = frame.type, frame.payload
        cls = _REFUSAL_ERRORS.get(code, PeerError)
        if code == "closing":
            return self.close(cls(str(message)))
        who = self.peer_id or "the peer"
        self.close(cls(f"{who} closed the connection: {code}: {message}"))

    # -- dispatch, one method per state ----------------------------------------

    def _process__connecting(self, frame):
        raise ProtocolError(f"{frame.kind.name} frame before the handshake started")

    def _process__closed(self, frame):
        pass

    def _process__hello(self, frame):
        if frame.kind is _ERROR:
            return self._refused(frame)
        if frame.kind is not Kind.HELLO:
            raise ProtocolError(f"{frame.kind.name} frame before authentication (expected HELLO)")
        p = frame.payload
        if not isinstance(p, dict):
            raise ProtocolError("malformed HELLO: payload is not a map")
        versions, node, nonce = p.get("versions"), p.get("node"), p.get("nonce")
        if (
            not isinstance(versions, list)
            or len(versions) != 2
            or not all(type(v) is int for v in versions)
            or not 0 < versions[0] <= versions[1]
        ):
            raise ProtocolError(f"malformed HELLO: versions {versions!r}")
        if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID_LEN:
            raise ProtocolError(f"malformed HELLO: node id {node!r}")
        if not isinstance(nonce, bytes) or not 16 <= len(nonce) <= 64:
            raise ProtocolError("malformed HELLO: nonce must be 16..64 bytes")
        (lo, hi), (peer_lo, peer_hi) = self._versions, versions
        agreed = min(hi, peer_hi)
        if agreed < max(lo, peer_lo):
            why = ""
            if self.frame_mac and peer_hi < MAC_VERSION:
                why = (f" (node {self.node_id} wants per-frame MACs, version {MAC_VERSION}: "
                       f"upgrade node {node}, or set peer_frame_mac off during the upgrade)")
            raise VersionMismatch(
                f"incompatible peer protocol: node {self.node_id} speaks versions {lo}..{hi}, "
                f"node {node} speaks {peer_lo}..{peer_hi}{why}"
            )
        if node == self.node_id:
            raise PeerError(f"the peer claims our own node id {node!r} (connected to ourselves?)")
        if self.expected_peer is not None and node != self.expected_peer:
            raise PeerError(f"expected node {self.expected_peer!r} but the peer is node {node!r}")
        if nonce == self._nonce:
            raise AuthenticationError("the peer echoed our nonce")
        self.peer_id, self.version, self._peer_nonce = node, agreed, nonce
        if agreed >= MAC_VERSION:
            peer_mac = p.get("mac", False)
            if type(peer_mac) is not bool:
                raise ProtocolError(f"malformed HELLO: mac {peer_mac!r}")
            self.mac = self.frame_mac or peer_mac     # either end asking for them is enough
        self._chunk_limit = self.max_message_size if agreed >= CHUNK_VERSION else 0
        self.state = State.AUTH
        if self.initiator:
            # The dialer proves first; the acceptor answers only after checking,
            # so a stranger who connects never gets a proof to attack offline.
            self._send(Kind.AUTH, 0, None, self._proof(mine=True))

    def _process__auth(self, frame):
        if frame.kind is _ERROR:
            return self._refused(frame)
        if frame.kind is not Kind.AUTH:
            raise ProtocolError(f"{frame.kind.name} frame before authentication (expected AUTH)")
        proof = frame.payload
        if not isinstance(proof, bytes) or not hmac.compare_digest(proof, self._proof(mine=False)):
            raise AuthenticationError(
                f"node {self.peer_id} failed authentication (wrong cluster secret?)"
            )
        if not self.initiator:
            self._send(Kind.AUTH, 0, None, self._proof(mine=True))
            self._reader.max_frame_size = self.max_frame_size
        if self.mac:
            # from here on every frame either way carries its MAC (the AUTHs did not)
            self._send_mac = FrameMac(session_key(self._secret, self.version, self.node_id,
                                                  self.peer_id, self._nonce, self._peer_nonce))
            self._reader.mac = FrameMac(session_key(self._secret, self.version, self.peer_id,
                                                    self.node_id, self._peer_nonce, self._nonce))
        self._reader.hold = False
        self.state = READY
        self._on_ready()

    def _proof(self, mine):
        mac = self.mac if self.version >= MAC_VERSION else None
        if mine:
            return auth_proof(
                self._secret, self.version, self.node_id, self.peer_id, self._nonce,
                self._peer_nonce, mac
            )
        return auth_proof(
            self._secret, self.version, self.peer_id, self.node_id, self._peer_nonce, self._nonce,
            mac
        )

    def _process__ready(self, frame):
        kind = frame.kind
        if kind is _REQUEST:
            if frame.type is None or frame.req_id == 0:
                raise ProtocolError("REQUEST without a type or request id")
            self._on_request(frame.type, frame.req_id, frame.payload)
        elif kind is _RESPONSE or kind is _PONG:
            if frame.req_id in self._pending:
                self._pending.discard(frame.req_id)
                self._on_response(frame.req_id, frame.payload)
            else:
                self.late_responses += 1
        elif kind is _ERROR:
            if frame.req_id == 0:
                return self._refused(frame)
            if frame.req_id in self._pending:
                self._pending.discard(frame.req_id)
                self._on_error_response(frame.req_id, frame.type or "Error", frame.payload)
            else:
                self.late_responses += 1
        elif kind is _NOTIFY:
            if frame.type is None:
                raise ProtocolError("NOTIFY without a type")
            self._on_notify(frame.type, frame.payload)
        elif kind is _PING:
            self._send(_PONG, frame.req_id, None, None)
        elif kind is _CHUNK:
            self._chunk(frame.payload)
        else:
            raise ProtocolError(f"unexpected {kind.name} frame after authentication")

    def _chunk(self, payload):
        """A piece of a message above the frame limit: the message is processed once whole.
        Only one is under way at a time (its sender writes its chunks together), so a peer
        makes this end hold at most max_message_size bytes of it."""
        if not self._chunk_limit:
            raise ProtocolError(f"CHUNK frame on a connection of protocol version {self.version}")
        partial = self._partial
        if partial is None:
            partial = self._partial = reassembly(payload, self.max_message_size)
        frame = partial.add(payload)
        if frame is not None:
            self._partial = None
            self._process__ready(frame)
