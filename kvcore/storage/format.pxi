# The on-disk format of a LogStore, byte by byte. This file owns it: the
# Cython store includes it, the pure-Python twin parses the constants below
# (layout.py), and docs/storage.md describes the same bytes. All integers are
# little-endian. Change FORMAT_VERSION with any change here.

cdef enum:
    FORMAT_VERSION = 1

    # Segment file "<id:016x>.data" starts with a 32-byte header:
    #   0   8  magic b"RKVSEGMT"
    #   8   2  format version (u16)
    #   10  2  header size = 32 (u16)
    #   12  4  reserved, 0
    #   16  8  segment id (u64): high 32 bits a sequence, low 32 bits a merge output number
    #   24  4  reserved, 0
    #   28  4  CRC-32C of bytes 0..27 (u32)
    SEG_MAGIC = 0x544D474553564B52        # b"RKVSEGMT" read as u64
    SEG_HEADER_SIZE = 32

    # Then records, back to back. Each record:
    #   0   4  magic 0x314B5652 (b"RVK1") so a reader can resync after a bad record
    #   4   4  CRC-32C over bytes 8..end of record (header rest, key, value)
    #   8   8  timestamp, microseconds since the Unix epoch (u64)
    #   16  1  flags: 1 = tombstone (value empty), 2 = value lz4-compressed
    #   17  1  reserved, 0
    #   18  2  key length (u16), >= 1
    #   20  4  stored value length (u32), after compression
    #   24     key bytes, then value bytes
    REC_MAGIC = 0x314B5652
    REC_HEADER_SIZE = 24
    REC_OFF_CRC = 4
    REC_OFF_TSTAMP = 8
    REC_OFF_FLAGS = 16
    REC_OFF_RESERVED = 17
    REC_OFF_KEYLEN = 18
    REC_OFF_VALLEN = 20
    FLAG_TOMBSTONE = 1
    FLAG_COMPRESSED = 2
    FLAGS_KNOWN = 3
    MAX_KEY_BYTES = 65535                 # the u16 field; the store's limit is lower

    # Hint file "<id:016x>.hint", written when a segment is sealed:
    #   0   8  magic b"RKVHINTS"
    #   8   2  format version (u16)
    #   10  2  header size = 32 (u16)
    #   12  4  reserved, 0
    #   16  8  segment id (u64)
    #   24  8  number of entries (u64)
    # then one entry per record of the segment, in file order:
    #   0   8  key hash (u64, murmur3 token of the key)
    #   8   8  record offset in the segment (u64)
    #   16  4  record size in bytes (u32)
    #   20  1  flags (as the record's)
    #   21  1  reserved, 0
    #   22  2  key length (u16)
    #   24     key bytes
    # and a trailer: u32 CRC-32C of everything before it, then u32 magic 0x444E4548 (b"HEND").
    HINT_MAGIC = 0x53544E4948564B52       # b"RKVHINTS" read as u64
    HINT_HEADER_SIZE = 32
    HINT_ENTRY_SIZE = 24
    HINT_TRAILER_MAGIC = 0x444E4548
    HINT_TRAILER_SIZE = 8
