import io
import json
import logging

from kvnet import logsetup
from kvnet.config import load


def _log_with(cfg):
    stream = io.StringIO()
    handler = logsetup.configure(cfg, stream)
    try:
        logging.getLogger("kvnet.test").warning("partition %d moved", 7, extra={"partition": 7})
        logging.getLogger("kvnet.test").debug("hidden at info")
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def test_json_lines_carry_time_level_node_logger_message_and_fields():
    (line,) = _log_with(load(name="n9", log_format="json")).splitlines()
    rec = json.loads(line)
    assert rec["level"] == "warning" and rec["node"] == "n9" and rec["logger"] == "kvnet.test"
    assert rec["message"] == "partition 7 moved" and rec["fields"] == {"partition": 7}
    assert rec["time"].endswith("Z") and rec["time"][:4].isdigit()


def test_text_format_and_the_level_filter():
    out = _log_with(load(name="n9"))
    assert "n9 WARNING partition 7 moved" in out and "hidden" not in out
    assert "hidden at info" in _log_with(load(name="n9", log_level="debug"))
