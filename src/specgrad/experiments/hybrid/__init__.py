"""Beyond the studies: the condition-driven :class:`~specgrad.optim.Hybrid` against pure
Euclidean and pure spectral training, :mod:`.hybrid` (``hybrid``)."""
