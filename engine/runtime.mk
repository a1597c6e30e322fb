# engine/runtime.mk: model, executor and runtime (filled in by their own change).
