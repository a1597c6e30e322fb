# doc/local.mk: man pages and design notes.
