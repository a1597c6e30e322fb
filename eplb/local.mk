# eplb/local.mk: rules for this component (filled in by its own change).
