"""The end-to-end demo: the whole platform on the embedded defaults, one step after another."""
