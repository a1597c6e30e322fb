# doc/local.mk: man pages and design notes.
dist_man_MANS += doc/dualpipe.1
dist_doc_DATA += doc/design.md doc/trace-format.md doc/dualpipe-pp8-c20.svg doc/dualpipev-pp4-c10.svg \
	doc/dualpipe-overlap-pp4.svg doc/dualpipe-no-overlap-pp4.svg
