"""The node-wide journal: one fdatasync per group commit, however many partitions it touched
(docs/storage.md, "The journal").

With fsync=always each partition store writes its records into its own segment files without
syncing them, and appends a copy of each to the journal's buffer (kvcore/storage/jbuffer.pyx,
in C). A group commit takes the buffer (`take`, on the event loop), writes it at the end of
the journal file and fdatasyncs that one file (`Batch.write_sync`, in a worker thread): a
write is acknowledged once its journal frame is durable. A checkpoint (`rotate`, sync every
store written since, `retire`) cuts the journal. After a crash the frames of every journal
file left are replayed into their stores (`read_journal`), in order, before the node serves.

Frames name stores by a number bound to the store's directory (relative to the data
directory) in the same file, so each file replays alone. A partition dropped (its data handed
off) is journaled as a DROP frame: the replay never writes into it what was journaled before.

File "<number:016x>.jnl" starts with a 32-byte header:
  0 8 magic b"RKVJRNAL", 8 2 format version, 10 2 header size (32), 12 4 zero,
  16 8 file number, 24 4 zero, 28 4 CRC-32C of bytes 0..27
then frames, back to back (jbuffer.pyx writes them):
  0 4 magic 0x4A4B5652 (b"RVKJ"), 4 4 CRC-32C of bytes 8..end, 8 4 store id, 12 1 kind,
  13 3 zero, 16 4 payload length, 20 payload
Kinds: RECORDS (payload: store records as the segment holds them, back to back: format.pxi),
BIND (payload: the store's directory, UTF-8), DROP (payload: the directory too, since a
drop may land in a file where the store is no longer bound).
"""
import logging
import os
import struct
import threading

from kvcore._native import select
from kvcore.errors import StoreFormatError
from kvcore.storage.files import fsync_dir
from kvcore.storage.lock import DirLock

JournalBuffer = select("kvcore.storage.jbuffer", "kvcore.storage.jbuffer_py").JournalBuffer
crc32c = select("kvcore.hashing", "kvcore.hashing_py").crc32c

log = logging.getLogger("ringkv.journal")

FILE_MAGIC = b"RKVJRNAL"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sHHIQI")        # then u32 CRC of these 28 bytes
FILE_HEADER_SIZE = 32
FRAME_MAGIC = 0x4A4B5652
FRAME = struct.Struct("<IIIB3xI")
FRAME_HEADER = 20
RECORDS, BIND, DROP = 1, 2, 3
SUFFIX = ".jnl"


def file_name(number):
    return f"{number:016x}{SUFFIX}"


def _numbers(directory):
    out = []
    for name in os.listdir(directory):
        if name.endswith(SUFFIX):
            try:
                out.append(int(name[:-len(SUFFIX)], 16))
            except ValueError:
                continue
    return sorted(out)


def file_header(number):
    head = FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, FILE_HEADER_SIZE, 0, number, 0)
    return head + struct.pack("<I", crc32c(head))


def parse_frames(data):
    """The valid frames of one journal file's bytes: ([(store id, kind, payload)], the
    offset where they end). Stops at the first frame that is incomplete or fails its CRC
    (a torn tail after a crash)."""
    frames = []
    off, end = FILE_HEADER_SIZE, len(data)
    view = memoryview(data)
    while off + FRAME_HEADER <= end:
        magic, crc, sid, kind, n = FRAME.unpack_from(data, off)
        nxt = off + FRAME_HEADER + n
        if magic != FRAME_MAGIC or nxt > end or crc32c(view[off + 8:nxt]) != crc:
            break
        frames.append((sid, kind, bytes(view[off + FRAME_HEADER:nxt])))
        off = nxt
    return frames, off


class Replay:
    """What the journal files left by a crash hold: the records to write again, per store
    directory (relative to the data directory), oldest first, none from before that store's
    last DROP; and counts for the log and INFO."""

    def __init__(self):
        self.records = {}           # relative store directory -> [payload bytes]
        self.files = []             # the files read (numbers), retired once replayed
        self.frames = 0
        self.record_bytes = 0
        self.torn_bytes = 0         # bytes after the last valid frame of a file

    def take(self, relpath):
        """The payloads to replay into this store (once: None after)."""
        return self.records.pop(relpath, None)


def read_journal(directory):
    """Read every journal file of `directory` (a Replay)."""
    replay = Replay()
    ordered = []                    # (relpath, kind, payload), oldest first
    for number in _numbers(directory):
        path = os.path.join(directory, file_name(number))
        with open(path, "rb") as f:
            data = f.read()
        head = data[:FILE_HEADER_SIZE]
        if len(head) == FILE_HEADER_SIZE and head[:8] == FILE_MAGIC \
                and struct.unpack_from("<H", head, 8)[0] != FORMAT_VERSION:
            raise StoreFormatError(
                f"journal {path} has format version {struct.unpack_from('<H', head, 8)[0]}; "
                f"this ringkv reads version {FORMAT_VERSION}: start the release that wrote it "
                "(a clean stop leaves no journal)")
        if head != file_header(number):
            if len(data) > FILE_HEADER_SIZE:
                # frames behind a damaged header: kept aside for an operator, never deleted
                os.replace(path, path + ".damaged")
                fsync_dir(directory)
                log.error("journal %s: its header is damaged: its %d bytes are not replayed "
                          "and the file is kept as %s.damaged", path, len(data), path)
                replay.torn_bytes += len(data)
            else:
                replay.files.append(number)     # (created by a crash before its header)
            continue
        replay.files.append(number)
        frames, end = parse_frames(data)
        if end < len(data):
            replay.torn_bytes += len(data) - end
            log.warning("journal %s: %d bytes after offset %d are not whole frames (a write "
                        "cut short by the crash): not replayed", path, len(data) - end, end)
        bound = {sid: payload.decode() for sid, kind, payload in frames if kind == BIND}
        for sid, kind, payload in frames:
            if kind == BIND:
                continue
            relpath = payload.decode() if kind == DROP else bound.get(sid)
            if relpath is None:
                log.error("journal %s: a frame names store %d, which no frame binds: skipped",
                          path, sid)
                continue
            ordered.append((relpath, kind, payload))
    last_drop = {}
    for i, (relpath, kind, _) in enumerate(ordered):
        if kind == DROP:
            last_drop[relpath] = i
    for i, (relpath, kind, payload) in enumerate(ordered):
        if kind == RECORDS and i > last_drop.get(relpath, -1):
            replay.records.setdefault(relpath, []).append(payload)
            replay.frames += 1
            replay.record_bytes += len(payload)
    return replay


def retire(directory, numbers):
    """Delete these journal files of `directory` (their records are durable in the stores)."""
    for number in numbers:
        try:
            os.unlink(os.path.join(directory, file_name(number)))
        except FileNotFoundError:
            pass
    fsync_dir(directory)


class _File:
    """One journal file open for appending."""

    def __init__(self, directory, number):
        self.number = number
        self.path = os.path.join(directory, file_name(number))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            head = file_header(number)
            os.pwrite(self.fd, head, 0)
            os.fdatasync(self.fd)
            fsync_dir(directory)
        except BaseException:
            os.close(self.fd)
            os.unlink(self.path)
            raise
        self.size = FILE_HEADER_SIZE

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Batch:
    """Frames taken for one group commit, with where they go in which file."""

    __slots__ = ("journal", "file", "offset", "data")

    def __init__(self, journal, file, offset, data):
        self.journal, self.file, self.offset, self.data = journal, file, offset, data

    def write_sync(self):
        """Write the frames and fdatasync the file (a worker thread). Raises OSError."""
        j = self.journal
        view, off = memoryview(self.data), self.offset
        j._injected("write")
        while view:
            n = os.pwrite(self.file.fd, view, off)
            view, off = view[n:], off + n
        if j.before_sync is not None:
            j.before_sync()
        j._injected("fdatasync")
        os.fdatasync(self.file.fd)


class Journal:
    """The node's journal in one directory: bind stores, take frames for a group commit,
    rotate and retire files at checkpoints. Opening it reads what a crash left (`replay`)."""

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._dirlock = DirLock(os.path.join(directory, "LOCK"))    # one process at a time
        self.replay = read_journal(directory)
        self.buffer = JournalBuffer()
        self._ids = {}              # relative store directory -> store id
        self._next_id = 1
        self._lock = threading.Lock()   # (partitions open in threads: kvnet/replica.py)
        self.retired_files = []     # files whose records the stores hold: to delete
        self.failed = None          # the OSError of a failed write or fdatasync: for good
        self.before_sync = None     # tests: called in the worker thread before each fdatasync
        self._fault = None          # tests: (op, errno, times left)
        last = self.replay.files[-1] if self.replay.files else 0
        self.file = _File(directory, last + 1)

    @property
    def size(self):
        """Bytes in the current file (written or taken for writing)."""
        return self.file.size

    def bind(self, relpath):
        """A store id for this store directory, journaled in the current file."""
        with self._lock:
            sid = self._ids.get(relpath)
            if sid is None:
                sid = self._ids[relpath] = self._next_id
                self._next_id += 1
                self.buffer.add(sid, BIND, relpath.encode())
            return sid

    def drop(self, relpath):
        """That store's directory is being deleted: nothing journaled for it so far may be
        replayed into it (a later bind starts afresh)."""
        with self._lock:
            sid = self._ids.pop(relpath, None)
            if sid is not None:
                self.buffer.add(sid, DROP, relpath.encode())

    def take(self):
        """The frames appended since the last take, as a Batch for the next round (None if
        there are none). On the event loop: rounds take in the order they start."""
        data = self.buffer.take()
        if not data:
            return None
        batch = Batch(self, self.file, self.file.size, data)
        self.file.size += len(data)
        return batch

    def new_file(self):
        """Create the next file (a worker thread: it syncs the file and the directory)."""
        return _File(self.directory, self.file.number + 1)

    def switch(self, new):
        """Frames appended from now on go to `new` (from new_file), with every bound store
        bound again; returns the previous file, which a checkpoint retires once the rounds
        writing into it have ended and the stores are synced. On the loop."""
        old, self.file = self.file, new
        with self._lock:
            for relpath, sid in self._ids.items():
                self.buffer.add(sid, BIND, relpath.encode())
        return old

    def rotate(self):
        """new_file() and switch() at once."""
        return self.switch(self.new_file())

    def retire(self, files):
        """Delete journal files (numbers, or _File objects: closed first) whose records the
        stores hold durably."""
        numbers = []
        for f in files:
            if isinstance(f, _File):
                f.close()
                f = f.number
            numbers.append(f)
        retire(self.directory, numbers)

    def close(self, retire=True):
        """Close the current file; retire=True (every store closed and synced): delete every
        journal file, so a clean start replays nothing."""
        self.file.close()
        try:
            if retire:
                self.retire(_numbers(self.directory))
        finally:
            self._dirlock.release()

    def _fail_next(self, op, err, times=1):
        """Tests: the next `times` writes ("write") or fdatasyncs ("fdatasync") fail."""
        self._fault = (op, err, times)

    def _injected(self, op):
        fault = self._fault
        if fault is not None and fault[0] == op:
            _, err, times = fault
            self._fault = (op, err, times - 1) if times > 1 else None
            raise OSError(err, f"{os.strerror(err)} (injected: journal {op})")
