"""One module per figure; each has run(cfg) -> {'title', 'rows', 'targets', 'notes'}."""
