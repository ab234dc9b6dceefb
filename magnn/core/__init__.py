"""The bottom tier: the graph, binning and raw statistics, the compiled ops' contract,
constants and user-facing errors. Imports nothing else from magnn."""
