"""Console scripts: argument parsing only; the logic lives in kvnet."""
