"""A node's logging: `log_level` and `log_format` (text, or JSON lines for log shippers).

A JSON line holds time, level, node, logger and message, and under "fields" whatever a log
call passed in `extra=` (docs/config.md)."""
import json
import logging
import time

# attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node):
        super().__init__()
        self.node = node

    def format(self, record):
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if fields:
            out["fields"] = fields
        return json.dumps(out, default=repr)


def configure(cfg, stream=None):
    """Install the root handler for a node process (replacing any earlier one)."""
    handler = logging.StreamHandler(stream)
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter(cfg.name))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {cfg.name} %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(cfg.log_level.upper())
    return handler
