"""Does the layerwise test predict? :mod:`.criterion_accuracy` (``criterion-accuracy``) scores
``nr(G) >= st(A)`` against the measured one-step probe over the models of :mod:`.models`
and the moments of AdamW and Muon runs; :mod:`.analysis` holds the statistics."""
