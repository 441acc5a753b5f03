"""Pure-Python twin of kvnet/resp/fastparse.pyx (RINGKV_NO_EXTENSIONS=1).

The compiled module only speeds up the common case; the parser's own Python scan handles
every command it does not take. So the twin takes nothing, and the parser does all the work.
"""


def take_commands(buf, pos, n, max_bulk, max_args, max_inline, max_command, out):
    return pos
