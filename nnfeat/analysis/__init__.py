"""View computations: tensors in, tensors out, one module per view (no files, no HTML: those are in
:mod:`nnfeat.views` and the results' ``.save``)."""
