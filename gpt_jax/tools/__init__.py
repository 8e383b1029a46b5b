"""Tools a model can call from inside its reply (see docs/tools.md); today: the calculator."""
