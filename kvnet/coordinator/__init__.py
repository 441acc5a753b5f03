"""kvnet.coordinator (see docs/)."""
