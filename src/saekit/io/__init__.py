"""Reading and writing dictionaries and run state on disk.

``saekit_format`` is saekit's own format, ``checkpoint`` a training run's resumable
state, one module per peer library's format (``saelens``, ``sparsify``,
``dictionary_learning``, ``gemma_scope``), ``formats`` detection and conversion among
them all, ``files`` the atomic writes and folder locks everything here writes through.
Local files only: the Hub (``saekit.hub``) sits above this package and is never
imported by it.
"""
