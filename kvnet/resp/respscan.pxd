# The RESP request scan's number reader, inline in each extension that cimports it
# (kvnet/resp/fastparse.pyx, kvnet/localdoor.pyx): both take exactly the same numbers.


cdef inline Py_ssize_t resp_number(const char* p, Py_ssize_t i, Py_ssize_t n,
                                   long long* value) noexcept nogil:
    """Digits at p[i] up to CRLF -> offset after the CRLF, or -1 (not digits, too long, cut).
    At most 18 digits and no leading zero (hiredis refuses those): longer ones go to the
    Python scan."""
    cdef long long v = 0
    cdef Py_ssize_t start = i
    cdef char c
    while i < n:
        c = p[i]
        if c >= 48 and c <= 57:
            if i - start >= 18 or (i > start and p[start] == 48):
                return -1
            v = v * 10 + (c - 48)
            i += 1
        elif c == 13:
            if i == start or i + 1 >= n or p[i + 1] != 10:
                return -1
            value[0] = v
            return i + 2
        else:
            return -1
    return -1
