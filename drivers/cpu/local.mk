# drivers/cpu/local.mk: the built-in CPU driver (filled in by its own change).
