"""kvnet.peer (see docs/)."""
