"""kvnet.resp (see docs/)."""
